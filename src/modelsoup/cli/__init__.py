"""The command line: thin click commands over the API (``modelsoup --help``)."""
