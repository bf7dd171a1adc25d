"""Shared engine of ``train.py``, ``test.py``, ``firing_num.py``, ``main.py`` and ``finetune.py``.

Import the submodules you need (``engine.args``, ``engine.config``, ``engine.loaders``, ``engine.loop``,
``engine.run``, ...); this package file imports nothing heavy so that light users (for example the profiler)
pay nothing for it.
"""
