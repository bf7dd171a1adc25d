"""Shared training engine for ``train.py`` (and later ``test.py``, ``firing_num.py``, ``main.py``, ``finetune.py``).

Import the submodules you need (``engine.args``, ``engine.config``, ``engine.builders``, ``engine.loop``,
``engine.run``, ...); this package file imports nothing heavy so that light users (for example profiler tools)
pay nothing for it.
"""
