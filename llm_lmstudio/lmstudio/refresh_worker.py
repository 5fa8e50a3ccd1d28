"""The detached process that refreshes the model-list cache when a server was too slow for a command's budget:
`python -m llm_lmstudio.lmstudio.refresh_worker`, started by catalog.py. Prints nothing; removes its lock when done.
It runs at a lower priority, so that its start-up never slows the command that started it, nor the next one."""

import os

if __name__ == "__main__":
    try:
        os.nice(10)
    except (AttributeError, OSError):  # not on every platform; a listing at normal priority is still right
        pass
    from llm_lmstudio.lmstudio import catalog

    catalog.background_refresh()
