"""Profiling of the spiking transformers: the instrumented-STAtten-fork workflow, with correct timing.

``python -m profiler run`` times and probes a model run by run and writes the fork's text capture and a
JSON-lines stream; ``parse`` turns captures (the fork's own included) into CSV tables; ``plot`` draws the six
figures.  See docs/profiler.md.
"""
