import itertools

from cxr.preprocess.components import Components


def test_components_are_named_by_their_smallest_key_whatever_the_join_order():
    pairs = [("d", "b"), ("e", "f"), ("b", "a"), ("f", "g")]
    for order in itertools.permutations(pairs):
        components = Components()
        for a, b in order:
            components.join(a, b)
        assert [components.root(key) for key in "abcdefg"] == ["a", "a", "c", "a", "e", "e", "e"]


def test_a_long_chain_resolves_to_its_first_key():
    components = Components()
    for key in range(2000, 0, -1):
        components.join(key, key - 1)
    assert {components.root(key) for key in range(2001)} == {0}
