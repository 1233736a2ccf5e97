"""Stand-in for transformers' ``tests/generation/test_utils.py`` (not in the 5.24.0 sdist; written for hf_recperc).

``ModelTesterMixin`` only checks ``issubclass(tester, GenerationTesterMixin)`` to insist that models which can
``generate`` run the generation tests. Our models cannot generate (no language head), so a marker class is all
that is needed: none of our testers inherit it, which is exactly what that check expects of them.
"""


class GenerationTesterMixin:
    """Marker class (see the module docstring)."""
