"""What TensorFlow's shared libraries write while they load: dropped, and nothing else."""

from __future__ import annotations

import os

from cxr import keras_lib

LOAD_NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1764257000.123456   24585 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
    "[mutex.cc : 452] RAW: Lock blocking 0x55b161f5c4d0   @ 0x7fa12922b1a2 0x7fa1282fb23c",
]
OTHER_OUTPUT = ["E0000 00:00:1764257000.1 24585 cuda_executor.cc:1] failed call to cuInit: an error the user needs",
                "a line of our own", "Lock blocking, said by someone else"]


def test_load_notices_are_dropped_and_the_rest_written_back(capfd):
    with keras_lib._load_notices_dropped():
        for line in [*LOAD_NOTICES, *OTHER_OUTPUT]:
            os.write(2, f"{line}\n".encode())
        assert capfd.readouterr().err == ""  # held back while loading
    assert capfd.readouterr().err.splitlines() == OTHER_OUTPUT
