"""The editing tasks: what differs between classification and generation (collator, fast-path suffix, editor).

A task imports ``editing``, ``tuner``, ``data`` and ``utils``, never another task.
"""
