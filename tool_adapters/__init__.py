"""Tool adapters: one package per backend, each exporting an ``ADAPTER`` built with the sdk."""
