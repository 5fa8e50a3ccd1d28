"""The detached process that embeds the router's new exemplars: `python -m llm_lmstudio.router.build_worker MODEL_ID`,
started by classifier_setup.py so that no prompt waits for it. Prints nothing; removes its lock when done."""

import sys

from llm_lmstudio.router import classifier_setup

if __name__ == "__main__":
    classifier_setup.background_build(sys.argv[1])
