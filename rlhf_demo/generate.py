"""`python -m rlhf_demo.generate --policy NAME --prompts FILE --out OUT.jsonl` — answer every prompt.

FILE is a `.txt` (one prompt per line; blank lines skipped) or a `.jsonl` with a `prompt` field
(a string, or a list of chat messages). Prompts are answered in batches; each output row is
`{"prompt", "response", "policy", "finish_reason"}`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import add_sampling_args, make_parser, sampling_params, setup_logging
from .config import settings_from_args
from .generation import GenerationError, PolicyServer, Request
from .jsonl import iter_jsonl, text_lines
from .registry import RegistryError


class PromptFileError(ValueError):
    pass


#: This CLI's long-standing wording for bad lines (the checks are rlhf_demo.jsonl's, shared by every reader).
PROMPT_FILE_WORDING = {"nul": "contains a NUL byte (column {column})",
                       "utf8": "not valid UTF-8 (byte {byte} of the line)",
                       "json": "invalid JSON ({reason} at column {column})"}


def read_prompts(path: Path) -> list[list[dict]]:
    """Conversations (lists of messages) from a .txt or .jsonl file; errors name file:line."""
    out = []
    if path.suffix == ".jsonl":
        for where, row in iter_jsonl(path, PromptFileError, wording=PROMPT_FILE_WORDING):
            prompt = row.get("prompt")
            if isinstance(prompt, str) and prompt.strip():
                out.append([{"role": "user", "content": prompt}])
            elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
                out.append(prompt)
            else:
                raise PromptFileError(f"{where}: needs a non-empty 'prompt' (string or list of messages)")
    else:
        out = [[{"role": "user", "content": text}]
               for _, _, text in text_lines(path, PromptFileError, wording=PROMPT_FILE_WORDING)]
    if not out:
        raise PromptFileError(f"{path}: no prompts")
    return out


def main(argv: list[str] | None = None) -> int:
    p = make_parser("python -m rlhf_demo.generate", __doc__)
    p.add_argument("--policy", default="sft", help="policy version: sft, rlhf-v0, … (default: %(default)s)")
    p.add_argument("--prompts", type=Path, required=True, help=".txt (one per line) or .jsonl (prompt field)")
    p.add_argument("--out", type=Path, required=True, help="output JSONL")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (default: %(default)s)")
    add_sampling_args(p)
    args = p.parse_args(argv)
    setup_logging()
    settings = settings_from_args(args)
    from tqdm import tqdm

    try:
        conversations = read_prompts(args.prompts)
        server = PolicyServer.from_settings(settings, max_batch=args.batch_size)
        server.ensure_policy(args.policy)
        params = sampling_params(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh, tqdm(total=len(conversations), desc=args.policy,
                                                               unit="prompt") as bar:
            for start in range(0, len(conversations), args.batch_size):
                chunk = conversations[start:start + args.batch_size]
                streams = server.submit([Request(c, args.policy, params) for c in chunk])
                for conv, s in zip(chunk, streams):
                    s.result()
                    prompt = conv[-1]["content"] if len(conv) == 1 else conv
                    fh.write(json.dumps({"prompt": prompt, "response": s.text, "policy": args.policy,
                                         "finish_reason": s.finish_reason}, ensure_ascii=False) + "\n")
                bar.update(len(chunk))
        server.close()
    except (GenerationError, RegistryError, PromptFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(conversations)} answers to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
