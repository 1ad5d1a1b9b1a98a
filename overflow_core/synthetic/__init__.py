"""Synthetic long-context tasks: a world of facts about made-up keys, filler text, and haystacks that hide needles in it.

The bundled model's formats come from here; the benchmark (``oprm bench``), the demo corpus and the tests use it to make
inputs of any length with known answers.
"""
