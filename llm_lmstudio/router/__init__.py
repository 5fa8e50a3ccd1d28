"""The lmstudio-router model: config, task classification, planning, running a plan with fallbacks.
Imports the model layers below it; never the commands."""
