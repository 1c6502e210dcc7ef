"""The `lmjax` command's arguments: one argparse subcommand per command, and the flag groups
several commands share (where the model comes from, sliding-window scoring). lmjax.cli.commands
parses with them and runs the commands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

DESCRIPTION = ("The `lmjax` command: train, plan, eval, score, eval-harness, generate, serve, "
               "predict, fill-mask, convert, checkpoints, plot, tokenizer, data.")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """The command line `argv` (default: sys.argv[1:]) parsed; argparse's own errors exit 2."""
  return parser().parse_args(bind_set_values(sys.argv[1:] if argv is None else argv))


def bind_set_values(argv: Sequence[str]) -> list[str]:
  """`--set a=1 b=2 CONFIG` as `--set=a=1 --set=b=2 CONFIG`.

  `--set` takes one or more KEY=VALUE words, and argparse would give it every word up to the
  next flag, CONFIG too (`lmjax train --set train.steps=10 tiny-gpt` then says CONFIG is
  missing). Binding each KEY=VALUE word to its own `--set=` ends the list at the first word
  without "=", which is left for the positional arguments. A `--set` followed by no KEY=VALUE
  word is left as it was, for the usual messages.
  """
  out, words, n = [], list(argv), 0
  while n < len(words):
    values = []
    if words[n] == "--set":
      while n + 1 + len(values) < len(words) and _is_override(words[n + 1 + len(values)]):
        values.append(words[n + 1 + len(values)])
    out += [f"--set={v}" for v in values] or [words[n]]
    n += 1 + len(values)
  return out


def _is_override(word: str) -> bool:
  return "=" in word and not word.startswith("-")


def parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lmjax", description=DESCRIPTION)
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  train = commands.add_parser("train", help="train a model, or resume its run directory")
  train.add_argument("config", metavar="CONFIG", help="a YAML file or a name in configs/ (tiny-gpt)")
  train.add_argument("--run-dir", default=None, help="where the run lives (default: runs/<config>)")
  train.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                     metavar="KEY=VALUE", help="dotted config overrides, e.g. train.steps=100; "
                                               "mesh=auto takes the mesh planner's choice for "
                                               "the devices present (lmjax plan)")
  train.add_argument("--compile-only", action="store_true",
                     help="compile the step for the configured mesh, print each device's memory "
                          "and the FLOPs per step, and exit without training or writing anything")
  train.add_argument("--allow-config-change", action="store_true",
                     help="resume even though the config changes the run's trajectory (data, "
                          "batch, seed, optimizer…); the change is recorded in "
                          "config_history.jsonl")

  _add_plan(commands)

  evaluate = commands.add_parser(
      "eval", help="a checkpoint's held-out loss, or its perplexity on any documents (--data)")
  evaluate.add_argument("config", metavar="CONFIG", nargs="?", default=None,
                        help="the run's config (held-out eval); with --data, its data.* keys "
                             "say how to read the documents")
  _add_source(evaluate)
  evaluate.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE")
  evaluate.add_argument("--data", nargs="+", action="extend", default=[], metavar="PATH",
                        help="files or globs of documents to score instead of the held-out "
                             "batches: plain text, .jsonl, .csv/.tsv or .parquet")
  evaluate.add_argument("--data-source", default=None, metavar="KIND",
                        help="how to read --data (text, jsonl, csv, parquet, tfds; default: by "
                             "suffix)")
  evaluate.add_argument("--field", default=None,
                        help="the JSON field or column holding the text (default: data.field)")
  _add_window(evaluate)
  _add_quantize(evaluate)

  score = commands.add_parser("score", help="write each document's log-likelihood")
  score.add_argument("input", metavar="FILE.jsonl", help="one JSON object per line with the text")
  _add_source(score)
  score.add_argument("--field", default="text", help="the field holding the text (default: text)")
  score.add_argument("--output", default=None, metavar="FILE",
                     help="a new JSON Lines file (default: stdout)")
  _add_window(score)
  _add_quantize(score)

  harness = commands.add_parser("eval-harness",
                                help="run lm-evaluation-harness tasks on a causal model")
  _add_source(harness)
  harness.add_argument("--tasks", required=True, type=lambda t: [x for x in t.split(",") if x],
                       help="comma-separated task names (or YAML files)")
  harness.add_argument("--num-fewshot", type=int, default=None)
  harness.add_argument("--limit", type=float, default=None,
                       help="examples per task (a fraction when below 1), for quick checks")
  harness.add_argument("--include-path", action="append", default=[], metavar="DIR",
                       help="a directory of task YAML files of your own; repeatable")
  _add_quantize(harness)
  harness.add_argument("--batch-size", type=int, default=16)
  harness.add_argument("--max-length", type=int, default=None,
                       help="context length (default: model.max_seq_len)")
  harness.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  harness.add_argument("--output", default=None, metavar="FILE.json",
                       help="also write the results as JSON to this new file")
  harness.add_argument("--online", action="store_true",
                       help="let the harness download task datasets (default: the local cache)")
  harness.add_argument("--seed", type=int, default=0)

  plot = commands.add_parser("plot", help="draw the training curves of one or more runs")
  plot.add_argument("run_dirs", metavar="RUN_DIR", nargs="+")
  plot.add_argument("--out", default="curves.png", metavar="FILE.png",
                    help="the image to write (default: curves.png)")
  plot.add_argument("--metric", default=None, type=lambda t: [m for m in t.split(",") if m],
                    help="comma-separated metrics.jsonl keys, one panel each (default: loss and "
                         "eval_loss)")
  plot.add_argument("--smooth", type=float, default=0.6,
                    help="moving-average weight in [0, 1) for the solid curves (default 0.6); "
                         "curves of only a few points are drawn as logged")
  plot.add_argument("--log-scale", action="store_true", help="a logarithmic y axis")
  plot.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

  _add_generate(commands)
  _add_serve(commands)

  classify = commands.add_parser("predict", help="label texts with a classifier")
  _add_source(classify)
  inputs = classify.add_mutually_exclusive_group(required=True)
  inputs.add_argument("--text", action="append", help="a text to label; repeat for several")
  inputs.add_argument("--input", metavar="FILE.jsonl",
                      help="one JSON object per line with the text (the run's data.field)")
  classify.add_argument("--output", default=None, metavar="FILE",
                        help="a new JSON Lines file (default: stdout)")
  classify.add_argument("--batch-size", type=int, default=32)

  fill = commands.add_parser("fill-mask", help="predict the [MASK] tokens of a text with an MLM")
  _add_source(fill)
  fill.add_argument("--text", required=True, action="append",
                    help='text with a mask token, e.g. "a [MASK] b"; repeat for several')
  fill.add_argument("--top-k", type=int, default=5)
  _add_convert(commands)

  listing = commands.add_parser("checkpoints", help="list a run's checkpoints and whether they restore")
  listing.add_argument("run_dir", metavar="RUN_DIR")
  listing.add_argument("--verify", action="store_true",
                       help="restore every checkpoint in full (slower; catches truncated arrays)")

  tokenizer = commands.add_parser("tokenizer", help="train a BPE tokenizer on a config's data")
  tokenizer_commands = tokenizer.add_subparsers(dest="action", required=True, metavar="ACTION")
  fit = tokenizer_commands.add_parser("train", help="byte-level BPE on the corpus of CONFIG")
  fit.add_argument("config", metavar="CONFIG")
  fit.add_argument("--out", required=True, help="new directory for tokenizer.json (+ config)")
  fit.add_argument("--vocab-size", type=int, default=None,
                   help="tokens, specials included (default: the config's model.vocab_size)")
  fit.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE")

  data = commands.add_parser("data", help="pre-tokenize a config's data for training")
  data_commands = data.add_subparsers(dest="action", required=True, metavar="ACTION")
  prepare = data_commands.add_parser(
      "prepare", help="tokenize and pack CONFIG's data into array_record shards in OUT_DIR")
  prepare.add_argument("config", metavar="CONFIG")
  prepare.add_argument("out_dir", metavar="OUT_DIR", help="a new directory")
  prepare.add_argument("--workers", type=int, default=0,
                       help="processes reading and tokenizing files in parallel (default 0: this one)")
  prepare.add_argument("--rows-per-shard", type=int, default=65536)
  prepare.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                       metavar="KEY=VALUE")
  return parser


def _add_plan(commands) -> None:
  plan = commands.add_parser(
      "plan", help="rank the meshes and remat policies of N devices for a config: estimated "
                   "memory, FLOPs and communication per device, the best ones compiled to "
                   "confirm their memory, and a recommendation")
  plan.add_argument("config", metavar="CONFIG", help="a YAML file or a name in configs/")
  plan.add_argument("--devices", required=True, metavar="N",
                    help="how many devices to plan for (compiled on N fake CPU devices)")
  plan.add_argument("--device-memory", default=None, metavar="GB",
                    help="memory of one device in GiB (default: this machine's accelerator's; "
                         "needed on CPU for a verdict)")
  plan.add_argument("--compile", default="3", metavar="K", dest="compile_top",
                    help="compile the K fastest candidates that may fit to confirm their "
                         "memory, in up to 3 rounds until the fastest expected to fit is "
                         "confirmed (default 3; 0: estimates only)")
  plan.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                    metavar="KEY=VALUE", help="dotted config overrides, e.g. train.batch_size=64")


def _add_convert(commands) -> None:
  convert = commands.add_parser("convert", help="convert weights to and from Hugging Face")
  directions = convert.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
  hf_in = directions.add_parser("hf-to-lmjax", help="import a Hugging Face model as a run directory")
  hf_in.add_argument("hf_dir", metavar="HF_DIR",
                     help="a Hugging Face model directory, a hub id or a .gguf file")
  hf_in.add_argument("run_dir", metavar="RUN_DIR")
  hf_in.add_argument("--allow-pickle", action="store_true",
                     help="read a pickled pytorch_model.bin (with torch.load(weights_only=True))")
  hf_in.add_argument("--no-scan", action="store_true", help="store layers unrolled, not stacked")
  hf_in.add_argument("--adapter", default=None, metavar="ADAPTER_DIR",
                     help="a PEFT LoRA adapter directory of this model, attached to the run")
  hf_out = directions.add_parser("lmjax-to-hf", help="export a run's checkpoint for Hugging Face")
  hf_out.add_argument("run_dir", metavar="RUN_DIR")
  hf_out.add_argument("hf_dir", metavar="HF_DIR")
  hf_out.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  hf_out.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                      help="dtype of the written tensors (default: the params' own)")
  hf_out.add_argument("--max-shard-size", type=_byte_size, default=2 * 2**30,
                      help="largest safetensors file, e.g. 2GB, 500MB or bytes (default 2GB)")
  peft_out = directions.add_parser("lmjax-to-peft",
                                   help="export a LoRA run's adapters as a PEFT adapter directory")
  peft_out.add_argument("run_dir", metavar="RUN_DIR")
  peft_out.add_argument("out_dir", metavar="ADAPTER_DIR")
  peft_out.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  peft_out.add_argument("--base-model", default=None,
                        help="base_model_name_or_path to record (default: the run's "
                             "model.init_from)")
  check = directions.add_parser("verify", help="compare a run's model with a Hugging Face model")
  check.add_argument("hf_dir", metavar="HF_DIR")
  check.add_argument("run_dir", metavar="RUN_DIR")
  check.add_argument("--step", type=int, default=None)
  check.add_argument("--tolerance", type=float, default=1e-4,
                     help="largest |Δlogit| accepted (default 1e-4, for float32 weights)")
  check.add_argument("--allow-pickle", action="store_true",
                     help="read pytorch_model.bin (pickle: only from a source you trust)")


def _byte_size(text: str) -> int:
  units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
  upper = text.strip().upper()
  for unit, factor in units.items():
    if upper.endswith(unit) and upper[:-len(unit)].strip().replace(".", "", 1).isdigit():
      return int(float(upper[:-len(unit)]) * factor)
  if upper.isdigit():
    return int(upper)
  raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 2GB, 500MB or 1000000")


def _add_generate(commands) -> None:
  """`generate`'s flags. Sampling flags default to None: unset ones come from the model's
  generation_config.json, else lmjax's defaults (lmjax.infer.complete.resolve_settings)."""
  generate = commands.add_parser("generate", help="continue a prompt with a causal model")
  _add_source(generate)
  prompts = generate.add_mutually_exclusive_group(required=True)
  prompts.add_argument("--prompt", action="append",
                       help="text to continue; repeat for a batch of prompts")
  prompts.add_argument("--input", metavar="FILE.jsonl",
                       help='one JSON object per line with a "prompt"; writes JSON Lines')
  generate.add_argument("--output", default=None, metavar="FILE",
                        help='a new JSON Lines file, one {"prompt", "completions"} object per '
                             "prompt (default with --input: stdout)")
  generate.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
  generate.add_argument("--max-new-tokens", type=int, default=None, help="default 64")
  generate.add_argument("--min-new-tokens", type=int, default=None,
                        help="no end-of-sequence before this many tokens (default 0)")
  generate.add_argument("--temperature", type=float, default=None,
                        help="0 means greedy (default 1.0)")
  generate.add_argument("--top-k", type=int, default=None)
  generate.add_argument("--top-p", type=float, default=None)
  generate.add_argument("--repetition-penalty", type=float, default=None,
                        help="> 1 discourages tokens already in the prompt or the output "
                             "(Hugging Face's; default 1.0, off)")
  generate.add_argument("--num-return-sequences", type=int, default=None,
                        help="sequences sampled per prompt (default 1)")
  generate.add_argument("--stop", action="append", default=None, metavar="STRING",
                        help="end a continuation where this text appears, cut before it; "
                             "repeat for several")
  generate.add_argument("--seed", type=int, default=None, help="default 0")
  generate.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  _add_quantize(generate)
  generate.add_argument("--no-stream", action="store_true",
                        help="print a single prompt's text at the end, not as it is decoded")
  generate.add_argument("--chat", action="store_true",
                        help="each prompt is a user message, rendered with the run's chat "
                             "template (data.chat_template, else the tokenizer's, else ChatML); "
                             "prints the reply")


def _add_serve(commands) -> None:
  serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous "
                                            "batching (needs lmjax[serve])")
  _add_source(serve)
  serve.add_argument("--host", default="127.0.0.1",
                     help="the address to listen on (default 127.0.0.1; 0.0.0.0 for every "
                          "interface)")
  serve.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
  serve.add_argument("--max-batch", type=int, default=8,
                     help="requests decoded together: the KV cache's slots (default 8)")
  serve.add_argument("--max-seq-len", type=int, default=None,
                     help="each slot's tokens, prompt and answer (default: the model's context, "
                          "at most 2048)")
  serve.add_argument("--max-queue", type=int, default=None,
                     help="requests waiting for a slot before more are refused with 429 "
                          "(default 4 x --max-batch)")
  serve.add_argument("--model-name", default=None,
                     help="the name clients ask for (default: the source directory's name)")
  serve.add_argument("--adapter", action="append", default=None, metavar="NAME=PATH",
                     help="also serve a PEFT LoRA adapter directory of the model, chosen by "
                          "requests whose model is NAME; repeat for several")
  serve.add_argument("--pooling", choices=("mean", "last", "cls"), default=None,
                     help="/v1/embeddings: pool the final hidden states over the tokens, or take "
                          "the last or first token's (default: a sentence-transformers "
                          "directory's own, else mean)")
  serve.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                     metavar="mesh.KEY=VALUE",
                     help="the mesh to serve on, in training's mesh.* keys: params placed as "
                          "training places them, the slots split over mesh.data (e.g. "
                          "mesh.tensor=2 mesh.data=4; default: every local device on mesh.data)")
  serve.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  _add_quantize(serve)


def _add_window(parser: argparse.ArgumentParser) -> None:
  """Flags of the commands that score documents in sliding windows (lmjax.infer.perplexity)."""
  parser.add_argument("--stride", type=int, default=None,
                      help="tokens each window advances and predicts (default: --max-length, "
                           "disjoint windows; smaller gives each prediction more context)")
  parser.add_argument("--max-length", type=int, default=None,
                      help="window length in tokens (default: model.max_seq_len)")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")


def _add_quantize(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--quantize", choices=("int8", "int4"), default=None, metavar="SCHEME",
                      help="hold the blocks' projections as int8 or int4 weights "
                           "(model.quantization.scheme; needs lmjax[quant])")


def _add_source(parser: argparse.ArgumentParser) -> None:
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--run-dir", help="an lmjax run directory (latest checkpoint)")
  source.add_argument("--hf", metavar="HF_DIR",
                      help="a Hugging Face model directory, a hub id or a .gguf file")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
