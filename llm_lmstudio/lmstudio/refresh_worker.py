"""The detached process that refreshes the model-list cache when a server was too slow for a command's budget:
`python -m llm_lmstudio.lmstudio.refresh_worker`, started by catalog.py. Prints nothing; removes its lock when done."""

from llm_lmstudio.lmstudio import catalog

if __name__ == "__main__":
    catalog.background_refresh()
