"""The plugin's console commands, each a thin ``main(argv=None)``."""
