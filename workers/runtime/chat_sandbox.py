"""The child process that renders chat templates (run as a script: `python -I chat_sandbox.py
LIMIT_BYTES`). It imports only the standard library and jinja2.

A chat template is Jinja from a tenant's upload. Jinja's ImmutableSandboxedEnvironment keeps
it from reaching Python's internals, but not from looping for ever or building a string of
10**10 characters; so it runs here, under an address-space limit, and its parent kills it past
a time limit. One JSON request per line on stdin, one JSON answer per line on stdout.
"""

from __future__ import annotations

import json
import resource
import sys
from datetime import datetime
from typing import Any

MAX_OUTPUT_CHARS = 1_000_000
_compiled: dict[str, Any] = {}


def _environment() -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # As transformers' apply_chat_template sets it up, so prompts are rendered the same.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def _render(env: Any, request: dict[str, Any]) -> str:
    source = request["template"]
    template = _compiled.get(source)
    if template is None:
        if len(_compiled) >= 8:
            _compiled.clear()
        template = _compiled[source] = env.from_string(source)
    text = template.render(
        messages=request["messages"], add_generation_prompt=True, **request["specials"]
    )
    if len(text) > MAX_OUTPUT_CHARS:
        raise ValueError(f"the rendered chat is over {MAX_OUTPUT_CHARS} characters")
    return str(text)


def main() -> None:
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    env = _environment()
    # Said once started: the parent's render deadline counts from here, not from the start of
    # an interpreter that a loaded machine may take seconds to bring up.
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            answer: dict[str, Any] = {"text": _render(env, json.loads(line))}
        except MemoryError:
            _compiled.clear()
            answer = {"error": "the chat template ran out of memory"}
        except RecursionError:
            answer = {"error": "the chat template recursed too deep"}
        except Exception as exc:  # a template's error, whatever jinja raised
            answer = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
