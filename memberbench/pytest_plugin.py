"""memberbench's pytest plugin (installed through the ``pytest11`` entry point).

Placeholder while the plugin lands: it must stay importable because every pytest run on a
machine with memberbench installed imports it.
"""
