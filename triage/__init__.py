"""The pipeline's library: what the stage scripts in stages/ call, and the tools `make` runs
(`python -m triage.<tool>`: server, chat, parity, presets, study, report).

One module per concern; each says in its docstring why it exists. A stage's DVC deps list
its script and every module here that it imports, directly or indirectly.
"""
