"""The command line: `cxr <job> ARGS` (command.py, pyproject.toml's console script) and
`python jobs/<job>.py ARGS` (for a checkout without cxr installed, and for `ray job submit
--working-dir .`), which take the same options from the same function.

Each job's module here holds its parser (`add_arguments`), turns the arguments into the
job's config (`build_config`) and runs its stage (`run`). Nothing here imports Ray,
TensorFlow or a stage at the top: `--help` and a bad argument answer at once, and each
`run` imports its stage only after setup_logging.
"""
