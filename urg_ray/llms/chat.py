"""Chat templates: what a tokenizer without one (the tiny local LLMs) is given to chat."""

from __future__ import annotations

import json
import os
from pathlib import Path

# "role: text" lines, then "assistant:" when a reply is wanted.
PLAIN_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                       "{% if add_generation_prompt %}assistant:{% endif %}")


def lacks_chat_template(source: str | os.PathLike) -> bool:
    """True for a local model folder whose tokenizer has no chat template (the tiny LLMs), so a
    server must be given one. Hub ids are assumed to ship theirs."""
    path = Path(source)
    if not path.is_dir():
        return False
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return False
    config = path / "tokenizer_config.json"
    return not (config.is_file() and "chat_template" in json.loads(config.read_text()))
