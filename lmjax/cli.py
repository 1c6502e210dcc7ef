"""The `lmjax` command: train, eval, generate and fill-mask.

User mistakes (`UserError`) print one paragraph and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from lmjax.errors import UserError


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lmjax", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  train = commands.add_parser("train", help="train a model, or resume its run directory")
  train.add_argument("config", metavar="CONFIG", help="a YAML file or a name in configs/ (tiny-gpt)")
  train.add_argument("--run-dir", default=None, help="where the run lives (default: runs/<config>)")
  train.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                     metavar="KEY=VALUE", help="dotted config overrides, e.g. train.steps=100")

  evaluate = commands.add_parser("eval", help="evaluate a checkpoint on the held-out data")
  evaluate.add_argument("config", metavar="CONFIG")
  evaluate.add_argument("--run-dir", required=True)
  evaluate.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  evaluate.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE")

  generate = commands.add_parser("generate", help="continue a prompt with a causal model")
  _add_source(generate)
  generate.add_argument("--prompt", action="append", required=True,
                        help="text to continue; repeat for a batch of prompts")
  generate.add_argument("--max-new-tokens", type=int, default=64)
  generate.add_argument("--temperature", type=float, default=1.0, help="0 means greedy")
  generate.add_argument("--top-k", type=int, default=None)
  generate.add_argument("--top-p", type=float, default=None)
  generate.add_argument("--seed", type=int, default=0)

  fill = commands.add_parser("fill-mask", help="predict the [MASK] tokens of a text with an MLM")
  _add_source(fill)
  fill.add_argument("--text", required=True, help='text with a mask token, e.g. "a [MASK] b"')
  fill.add_argument("--top-k", type=int, default=5)
  return parser


def _add_source(parser: argparse.ArgumentParser) -> None:
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--run-dir", help="an lmjax run directory (latest checkpoint)")
  source.add_argument("--hf", metavar="HF_DIR", help="a Hugging Face model directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def _cmd_train(args) -> int:
  from lmjax.config import load_config, resolve_config_path
  from lmjax.train.loop import train
  config = load_config(args.config, args.overrides)
  run_dir = args.run_dir or f"runs/{resolve_config_path(args.config).stem}"
  result = train(config, run_dir)
  if result.start_step >= config.train.steps:
    print(f"{run_dir} is already trained to step {result.start_step} "
          f"(train.steps={config.train.steps}); raise train.steps to continue.")
  else:
    last = result.last_row or {}
    print(f"trained {run_dir} to step {result.final_step}: loss {last.get('loss', float('nan')):.4f}"
          + (f", eval_loss {last['eval_loss']:.4f}" if "eval_loss" in last else ""))
  return 0


def _cmd_eval(args) -> int:
  from lmjax.evaluate import evaluate_run
  print(json.dumps(evaluate_run(args.config, args.run_dir, step=args.step, overrides=args.overrides)))
  return 0


def _load(args):
  """(model, params, tokenizer) from --run-dir or --hf."""
  if args.hf:
    raise UserError("--hf needs Hugging Face conversion, which this version does not have yet; "
                    "use --run-dir.")
  from lmjax.data.tokenizer import Tokenizer
  from lmjax.load import load_run
  from lmjax.run_dir import RunDir
  model, params = load_run(args.run_dir, step=args.step)
  return model, params, Tokenizer.load(RunDir(args.run_dir).tokenizer_dir)


def _cmd_generate(args) -> int:
  from lmjax.generate import generate
  model, params, tokenizer = _load(args)
  prompts = [tokenizer.encode(p) for p in args.prompt]
  for text, ids in zip(args.prompt, prompts):
    if not ids:
      raise UserError(f"--prompt {text!r} has no tokens: give some text to continue.")
  outputs = generate(model, params, prompts, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     seed=args.seed, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  for i, (prompt_ids, new_ids) in enumerate(zip(prompts, outputs)):
    if i:
      print()
    print(tokenizer.decode(list(prompt_ids) + list(new_ids)))
  return 0


def _cmd_fill_mask(args) -> int:
  from lmjax.generate import fill_mask
  model, params, tokenizer = _load(args)
  if tokenizer.mask_id is None:
    raise UserError("this model's tokenizer has no mask token, so it cannot fill masks.")
  mask_text = tokenizer.id_to_token(tokenizer.mask_id)
  pieces = args.text.replace("[MASK]", mask_text).split(mask_text)
  if len(pieces) < 2:
    raise UserError(f"--text has no mask token: write [MASK] (or {mask_text}) where a word is missing.")
  ids = [tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id]
  for i, piece in enumerate(pieces):
    if i:
      ids.append(tokenizer.mask_id)
    ids.extend(tokenizer.encode(piece))
  ids.append(tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id)
  ids = [i for i in ids if i is not None]
  for n, candidates in enumerate(fill_mask(model, params, ids, mask_id=tokenizer.mask_id,
                                           top_k=args.top_k)):
    print(f"mask {n + 1}:")
    for token_id, prob in candidates:
      print(f"  {prob:.4f}  {tokenizer.decode([token_id])!r}")
  return 0


_COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "generate": _cmd_generate,
             "fill-mask": _cmd_fill_mask}


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    return _COMMANDS[args.command](args)
  except UserError as e:
    print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"lmjax {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
