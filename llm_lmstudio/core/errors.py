"""How failures and warnings reach the user through llm: after llm has logged what arrived, on one line.
Never raises a traceback on its own; never imports a backend."""

import click
import llm


def warn_json_cut(response: llm.Response) -> None:
    """A schema answer that hit the token limit is cut JSON (a complete one would have ended the grammar):
    llm still exits 0 and prints it, so say so on stderr, after the answer inside the llm CLI."""
    limit = getattr(response.prompt.options, "max_tokens", None)
    at = f" ({limit} tokens)" if limit else ""
    note(f"warning: the answer stopped at the token limit{at} and is not valid JSON: raise it with -o max_tokens N")


def option_errors(exc) -> str:
    """A pydantic ValidationError of `-o` options as one line: `-o temperature 7: Input should be less than or
    equal to 2`, several joined by `; ` (llm prints each on two lines of its own)."""
    parts = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "options"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "this model has no such option (`llm models --options -q MODEL` lists them)"
        value = error.get("input")
        shown = f" {value}" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
        parts.append(f"-o {name}{shown}: {message}")
    return "; ".join(parts)


def note(message: str) -> None:
    """One line on stderr that is not a failure (llm still exits 0): inside the llm CLI after the answer, elsewhere now."""
    line = f"llm-lmstudio-mlx: {message}"
    context = click.get_current_context(silent=True)
    if context is None:
        click.echo(line, err=True)
    else:
        context.find_root().call_on_close(lambda: click.echo(line, err=True))


def fail_after_logging(message: str) -> None:
    """Inside the llm CLI, fail only after llm has logged what arrived (click runs close callbacks
    after the command, and turns a ClickException raised there into a one-line error); elsewhere, fail now."""
    context = click.get_current_context(silent=True)
    if context is None:
        raise llm.ModelError(message)

    def fail():
        raise click.ClickException(message)

    context.find_root().call_on_close(fail)
