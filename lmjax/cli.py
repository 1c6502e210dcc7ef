"""The `lmjax` command: train, eval, generate, fill-mask, convert, checkpoints, tokenizer, data.

User mistakes (`UserError`) print one paragraph and exit with status 2, without a traceback.
A run stopped by a non-finite loss (`train.nan_policy=stop`) exits with status 3; one stopped
by SIGTERM/SIGINT exits 0 after saving a checkpoint. A write the disk refuses (full, read-only,
no permission: `WriteFailed` or any OSError) exits with status 4, naming the path and cause,
leaving what was written before untouched. What the library reports (lmjax loggers)
shows on stderr as "lmjax: …" (lmjax.app).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from lmjax import app, complete, perplexity
from lmjax.config import load_config, resolve_config_path
from lmjax.convert import runs, verify
from lmjax.convert.loading import load_model
from lmjax.data.config import DataConfig
from lmjax.data.sources import ReadStats, iter_sources
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import UserError, WriteFailed
from lmjax.files import write_text_atomic
from lmjax.generate import fill_mask
from lmjax.predict import load_classifier, predict, read_inputs, texts_input, write_predictions
from lmjax.run.inspection import format_table, inspect_checkpoints
from lmjax.train.compile import compile_train_step
from lmjax.train.evaluate import evaluate_run
from lmjax.train.inputs import prepare_data
from lmjax.train.loop import train
from lmjax.train.multihost import is_writer


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="lmjax", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  train = commands.add_parser("train", help="train a model, or resume its run directory")
  train.add_argument("config", metavar="CONFIG", help="a YAML file or a name in configs/ (tiny-gpt)")
  train.add_argument("--run-dir", default=None, help="where the run lives (default: runs/<config>)")
  train.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                     metavar="KEY=VALUE", help="dotted config overrides, e.g. train.steps=100")
  train.add_argument("--compile-only", action="store_true",
                     help="compile the step for the configured mesh, print each device's memory "
                          "and the FLOPs per step, and exit without training or writing anything")
  train.add_argument("--allow-config-change", action="store_true",
                     help="resume even though the config changes the run's trajectory (data, "
                          "batch, seed, optimizer…); the change is recorded in "
                          "config_history.jsonl")

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

  score = commands.add_parser("score", help="write each document's log-likelihood")
  score.add_argument("input", metavar="FILE.jsonl", help="one JSON object per line with the text")
  _add_source(score)
  score.add_argument("--field", default="text", help="the field holding the text (default: text)")
  score.add_argument("--output", default=None, metavar="FILE",
                     help="a new JSON Lines file (default: stdout)")
  _add_window(score)

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
                    help="moving-average weight in [0, 1) for the solid curves (default 0.6)")
  plot.add_argument("--log-scale", action="store_true", help="a logarithmic y axis")
  plot.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

  _add_generate(commands)

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
  fill.add_argument("--text", required=True, help='text with a mask token, e.g. "a [MASK] b"')
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


def _add_convert(commands) -> None:
  convert = commands.add_parser("convert", help="convert weights to and from Hugging Face")
  directions = convert.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
  hf_in = directions.add_parser("hf-to-lmjax", help="import a Hugging Face model as a run directory")
  hf_in.add_argument("hf_dir", metavar="HF_DIR")
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
  generation_config.json, else lmjax's defaults (lmjax.complete.resolve_settings)."""
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
  generate.add_argument("--no-stream", action="store_true",
                        help="print a single prompt's text at the end, not as it is decoded")
  generate.add_argument("--chat", action="store_true",
                        help="each prompt is a user message, rendered with the run's chat "
                             "template (data.chat_template, else the tokenizer's, else ChatML); "
                             "prints the reply")


def _add_window(parser: argparse.ArgumentParser) -> None:
  """Flags of the commands that score documents in sliding windows (lmjax.perplexity)."""
  parser.add_argument("--stride", type=int, default=None,
                      help="tokens each window advances and predicts (default: --max-length, "
                           "disjoint windows; smaller gives each prediction more context)")
  parser.add_argument("--max-length", type=int, default=None,
                      help="window length in tokens (default: model.max_seq_len)")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")


def _add_source(parser: argparse.ArgumentParser) -> None:
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--run-dir", help="an lmjax run directory (latest checkpoint)")
  source.add_argument("--hf", metavar="HF_DIR", help="a Hugging Face model directory")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")


def _cmd_train(args) -> int:
  config = load_config(args.config, args.overrides)
  if args.compile_only:
    report = compile_train_step(config)
    if is_writer():
      print(report.format(), flush=True)
    return 0
  run_dir = args.run_dir or f"runs/{resolve_config_path(args.config).stem}"
  result = train(config, run_dir, allow_config_change=args.allow_config_change)
  if result.stopped_by:
    print(f"stopped {run_dir} by {result.stopped_by} at step {result.final_step} (saved); rerun "
          f"the same command to resume")
  elif result.start_step >= config.train.steps:
    print(f"{run_dir} is already trained to step {result.start_step} "
          f"(train.steps={config.train.steps}); raise train.steps to continue.")
  else:
    last = result.last_row or {}
    print(f"trained {run_dir} to step {result.final_step}: loss {last.get('loss', float('nan')):.4f}"
          + (f", eval_loss {last['eval_loss']:.4f}" if "eval_loss" in last else ""))
  return 0


def _cmd_eval(args) -> int:
  window = (args.stride, args.max_length, args.data_source, args.field)
  if not args.data and not args.hf and not any(v is not None for v in window):
    if args.config is None:
      raise UserError("give the run's CONFIG to evaluate on its held-out data, or --data PATH "
                      "to score documents of your own.")
    print(json.dumps(evaluate_run(args.config, args.run_dir, step=args.step,
                                  overrides=args.overrides)))
    return 0
  if args.config is None and args.overrides:
    raise UserError("--set needs a CONFIG to apply to: give one, or use --data, --data-source "
                    "and --field.")
  data = load_config(args.config, args.overrides).data if args.config else DataConfig()
  data = perplexity.documents_config(data, args.data, source=args.data_source, field=args.field)
  if not args.data and data == DataConfig():
    raise UserError("--data is missing: name the documents to score (plain text, .jsonl, .csv "
                    "or .parquet files), or give a CONFIG whose data.* keys name them.")
  loaded = load_model(run_dir=args.run_dir, hf_dir=args.hf, step=args.step, dtype=args.dtype)
  stats = ReadStats()
  texts = list(iter_sources(data, stats))
  if stats.skipped_files:
    print(f"lmjax eval: {stats.files_report()}", file=sys.stderr)
  if stats.skipped:
    print(f"lmjax eval: skipped {stats.skipped} bad record(s); the first: "
          f"{stats.first_problem}", file=sys.stderr)
  scores = perplexity.score_texts(loaded.model, loaded.params, loaded.tokenizer, texts,
                                  max_length=args.max_length, stride=args.stride,
                                  batch_size=args.batch_size)
  max_length, stride = perplexity.check_window(loaded.model, max_length=args.max_length,
                                               stride=args.stride)
  print(json.dumps({**perplexity.summarize(scores), "max_length": max_length, "stride": stride}))
  return 0


def _cmd_score(args) -> int:
  if args.output is not None and pathlib.Path(args.output).exists():
    raise UserError(f"--output {args.output} exists: choose a new file (score never "
                    f"overwrites).")
  records = perplexity.read_records(args.input, field=args.field)
  loaded = load_model(run_dir=args.run_dir, hf_dir=args.hf, step=args.step, dtype=args.dtype)
  scores = perplexity.score_texts(loaded.model, loaded.params, loaded.tokenizer,
                                  [r[args.field] for r in records], max_length=args.max_length,
                                  stride=args.stride, batch_size=args.batch_size)
  lines = "".join(json.dumps({**record, **score.as_dict()}, ensure_ascii=False) + "\n"
                  for record, score in zip(records, scores))
  if args.output is None:
    sys.stdout.write(lines)
  else:
    write_text_atomic(pathlib.Path(args.output), lines)
  summary = perplexity.summarize(scores)
  print(f"lmjax score: {summary['documents']} documents, {summary['tokens']} tokens: loss "
        f"{summary['loss']:.4f}, perplexity {summary['perplexity']:.3f}, bits per byte "
        f"{summary['bits_per_byte']:.4f}" if summary["tokens"] else
        f"lmjax score: {summary['documents']} documents and no token to predict",
        file=sys.stderr)
  return 0


def _cmd_plot(args) -> int:
  from lmjax import plot  # noqa: PLC0415 -- matplotlib loads only for this command
  out = plot.plot_runs(args.run_dirs, args.out, metrics=args.metric, smooth=args.smooth,
                       log_scale=args.log_scale, overwrite=args.overwrite)
  print(f"wrote {out}")
  return 0


def _cmd_eval_harness(args) -> int:
  from lmjax import harness  # noqa: PLC0415 -- lm-eval loads only for this command
  results = harness.run_harness(
      run_dir=args.run_dir, hf_dir=args.hf, step=args.step, tasks=args.tasks,
      num_fewshot=args.num_fewshot, limit=args.limit, include_path=args.include_path,
      batch_size=args.batch_size, dtype=args.dtype, max_length=args.max_length,
      output=args.output, online=args.online, seed=args.seed)
  print(harness.format_results(results))
  if args.output:
    print(f"wrote the results to {args.output}")
  return 0


def _cmd_generate(args) -> int:
  output = complete.check_new_output(args.output) if args.output else None
  texts = complete.read_prompts(args.input) if args.input else args.prompt
  loaded = load_model(run_dir=args.run_dir, hf_dir=args.hf, step=args.step, dtype=args.dtype)
  settings = complete.resolve_settings(vars(args), loaded)
  as_jsonl = bool(args.input or args.output)
  streams = (not args.no_stream and not as_jsonl and len(texts) == 1
             and settings.num_return_sequences == 1)
  results = complete.complete(
      loaded, texts, settings, chat_mode=args.chat, batch_size=args.batch_size,
      on_text=(lambda piece: print(piece, end="", flush=True)) if streams else None)
  if as_jsonl:
    complete.write_completions(results, output)
    if output:
      print(f"wrote {len(results)} prompts' completions to {output}")
  elif streams:
    print()
  else:
    shown = [r.shown_prompt + text for r in results for text in r.completions]
    print("\n\n".join(shown))
  return 0


def _cmd_predict(args) -> int:
  classifier = load_classifier(run_dir=args.run_dir, hf_dir=args.hf, step=args.step)
  inputs = read_inputs(args.input, classifier) if args.input else texts_input(args.text)
  summary = write_predictions(predict(classifier, inputs, batch_size=args.batch_size),
                              args.output)
  if args.output:
    print(f"wrote {summary['records']} predictions to {args.output}" + (
        f" (accuracy {summary['accuracy']:.4f} on {summary['labelled']} labelled)"
        if summary["labelled"] else ""))
  return 0


def _cmd_fill_mask(args) -> int:
  loaded = load_model(run_dir=args.run_dir, hf_dir=args.hf, step=args.step)
  model, params, tokenizer = loaded.model, loaded.params, loaded.tokenizer
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


def _cmd_convert(args) -> int:
  if args.direction == "hf-to-lmjax":
    config = runs.hf_to_run(args.hf_dir, args.run_dir, allow_pickle=args.allow_pickle,
                            scan_layers=not args.no_scan, adapter=args.adapter)
    print(f"imported {args.hf_dir} as {args.run_dir} ({config.model.family.value}, "
          f"{config.model.num_layers} layers, width {config.model.embed_dim})")
  elif args.direction == "lmjax-to-peft":
    runs.run_to_peft(args.run_dir, args.out_dir, step=args.step, base_model=args.base_model)
    print(f"exported the LoRA adapters of {args.run_dir} to {args.out_dir}; load them with "
          f"peft.PeftModel.from_pretrained(base, {str(args.out_dir)!r})")
  elif args.direction == "lmjax-to-hf":
    runs.run_to_hf(args.run_dir, args.hf_dir, step=args.step, dtype=args.dtype,
                   max_shard_size=args.max_shard_size)
    print(f"exported {args.run_dir} to {args.hf_dir}")
  else:
    agreement = verify.verify(args.hf_dir, args.run_dir, step=args.step,
                              allow_pickle=args.allow_pickle)
    print(f"max |Δlogit|: {agreement.max_abs_diff:.3g}")
    if agreement.mean_kl is not None:
      print(f"mean KL:      {agreement.mean_kl:.3g}")
      print(f"top-1 agree:  {agreement.top1_agreement:.2%}")
    if not agreement.max_abs_diff <= args.tolerance:
      print(f"lmjax convert verify: error: max |Δlogit| {agreement.max_abs_diff:.3g} is above the "
            f"tolerance {args.tolerance:g}", file=sys.stderr)
      return 1
  return 0


def _cmd_checkpoints(args) -> int:
  infos = inspect_checkpoints(args.run_dir, verify=args.verify)
  if not infos:
    print(f"{args.run_dir} has no checkpoints yet")
    return 0
  print(format_table(infos, verified=args.verify))
  bad = [i.name for i in infos if i.problem is not None and i.name == str(i.step)]
  if bad:  # unfinished writes are never loaded: they do not count
    print(f"lmjax checkpoints: error: step(s) {', '.join(bad)} cannot be restored (see above); "
          f"loading skips them (a newer damaged step is moved aside by the next `lmjax train`).",
          file=sys.stderr)
    return 1
  return 0


def _cmd_tokenizer(args) -> int:
  config = load_config(args.config, args.overrides)
  out = pathlib.Path(args.out)
  if out.exists() and any(out.iterdir()):
    raise UserError(f"--out {out} exists and is not empty: choose a new directory.")
  stats = ReadStats()
  documents = list(iter_sources(config.data, stats))
  if stats.skipped_files:
    print(f"lmjax tokenizer: {stats.files_report()}", file=sys.stderr)
  if stats.skipped:
    print(f"lmjax tokenizer: skipped {stats.skipped} bad record(s); the first: "
          f"{stats.first_problem}", file=sys.stderr)
  if not documents:
    raise UserError(f"data.paths {list(config.data.paths)} holds no usable text to train a "
                    f"tokenizer on: point it at files that hold text.")
  tokenizer = Tokenizer.train_bpe(documents, vocab_size=args.vocab_size or config.model.vocab_size)
  tokenizer.save(out)
  print(f"trained a {tokenizer.vocab_size}-token BPE on {len(documents)} documents into {out}; "
        f"use it with --set data.tokenizer={out}")
  return 0


def _cmd_data(args) -> int:
  if args.workers < 0:
    raise UserError(f"--workers must be 0 or more, got {args.workers}.")
  prepare_data(load_config(args.config, args.overrides), args.out_dir, workers=args.workers,
               rows_per_shard=args.rows_per_shard)
  print(f"train on it with: lmjax train {args.config} --set data.source=prepared "
        f"'data.paths=[{args.out_dir}]'")
  return 0


_COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "score": _cmd_score,
             "eval-harness": _cmd_eval_harness, "plot": _cmd_plot, "generate": _cmd_generate,
             "predict": _cmd_predict,
             "fill-mask": _cmd_fill_mask, "convert": _cmd_convert, "checkpoints": _cmd_checkpoints,
             "tokenizer": _cmd_tokenizer, "data": _cmd_data}


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  app.configure_process()
  try:
    return _COMMANDS[args.command](args)
  except UserError as e:
    print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
    return getattr(e, "exit_code", 2)
  except OSError as e:  # the disk refused a write (full, read-only): the path and the cause
    print(f"lmjax {args.command}: error: {e}. Free disk space or fix the permissions, then "
          f"rerun the same command.", file=sys.stderr)
    return WriteFailed.exit_code
  except KeyboardInterrupt:
    print(f"lmjax {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
