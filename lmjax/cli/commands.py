"""The `lmjax` command: running what lmjax.cli.parser parsed (train, plan, eval, score,
eval-harness, generate, serve, predict, fill-mask, convert, checkpoints, plot, tokenizer, data).

User mistakes (`UserError`) print one paragraph and exit with status 2, without a traceback.
A run stopped by a non-finite loss (`train.nan_policy=stop`) exits with status 3; one stopped
by SIGTERM/SIGINT exits 0 after saving a checkpoint. A write the disk refuses (full, read-only,
no permission: `WriteFailed` or any OSError) exits with status 4, naming the path and cause,
leaving what was written before untouched. What the library reports (lmjax loggers)
shows on stderr as "lmjax: …" (lmjax.cli.process).
"""

from __future__ import annotations

import errno
import json
import os
import sys
from typing import Sequence

from lmjax.cli import parser as cli_parser
from lmjax.cli import plan as plan_command
from lmjax.cli import process as app
from lmjax.config import load_config, resolve_config_path
from lmjax.convert import runs, verify
from lmjax.data.config import DataConfig
from lmjax.data.sources.documents import ReadStats, iter_sources
from lmjax.data.tokenize.tokenizer import Tokenizer
from lmjax.errors import UserError, WriteFailed
from lmjax.files import check_new_file, staged_directory, write_text_atomic
from lmjax.infer import complete, perplexity
from lmjax.infer import cloze_ids, fill_mask, generate
from lmjax.infer.engine import check_limits
from lmjax.infer.slot_mesh import check_slots_divide, serving_placement
from lmjax.infer.predict import (load_classifier, predict, read_inputs, texts_input,
                                 write_predictions)
from lmjax.run.inspection import format_table, inspect_checkpoints
from lmjax.run.loader import Loaded, load
from lmjax.storage import as_path, check_local, check_path
from lmjax.train.plan import resolve_auto_mesh
from lmjax.train.compile import compile_train_step
from lmjax.train.evaluate import evaluate_run
from lmjax.train.inputs import prepare_data
from lmjax.train.loop import train
from lmjax.train.multihost import is_writer


def _load(args, **options) -> Loaded:
  """The model a command's SOURCE names (`--run-dir DIR` or `--hf HF_DIR_OR_HUB_ID`), with its
  tokenizer, through the one loader (lmjax.run.loader)."""
  kind, source = ("run", args.run_dir) if args.run_dir is not None else ("hf", args.hf)
  scheme = getattr(args, "quantize", None)
  return load(source, step=args.step, require_tokenizer=True, kind=kind,
              quantization={"scheme": scheme} if scheme else None, **options)


def _cmd_train(args) -> int:
  config = load_config(args.config, args.overrides, auto_mesh=resolve_auto_mesh)
  if args.compile_only:
    report = compile_train_step(config)
    if is_writer():
      print(report.format(), flush=True)
    return 0
  run_dir = args.run_dir or f"runs/{resolve_config_path(args.config).stem}"
  # A GRPO run samples with inference's KV-cache decoder, which the trainer does not import.
  result = train(config, run_dir, allow_config_change=args.allow_config_change, sampler=generate)
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


def _report_skipped(command: str, stats: ReadStats) -> None:
  """The files left out and the records skipped while reading a source, on stderr."""
  if stats.skipped_files:
    print(f"lmjax {command}: {stats.files_report()}", file=sys.stderr)
  if stats.skipped:
    print(f"lmjax {command}: skipped {stats.skipped} bad record(s); the first: "
          f"{stats.first_problem}", file=sys.stderr)


def _cmd_eval(args) -> int:
  window = (args.stride, args.max_length, args.data_source, args.field)
  if not args.data and not args.hf and not any(v is not None for v in window):
    if args.config is None:
      raise UserError("give the run's CONFIG to evaluate on its held-out data, or --data PATH "
                      "to score documents of your own.")
    print(json.dumps(evaluate_run(args.config, args.run_dir, step=args.step,
                                  overrides=args.overrides, quantize=args.quantize)))
    return 0
  if args.config is None and args.overrides:
    raise UserError("--set needs a CONFIG to apply to: give one, or use --data, --data-source "
                    "and --field.")
  data = load_config(args.config, args.overrides).data if args.config else DataConfig()
  data = perplexity.documents_config(data, args.data, source=args.data_source, field=args.field)
  if not args.data and data == DataConfig():
    raise UserError("--data is missing: name the documents to score (plain text, .jsonl, .csv "
                    "or .parquet files), or give a CONFIG whose data.* keys name them.")
  loaded = _load(args, dtype=args.dtype)
  max_length, stride = perplexity.check_window(loaded.model, max_length=args.max_length,
                                               stride=args.stride)
  stats = ReadStats()
  scores = perplexity.score_texts(loaded.model, loaded.params, loaded.tokenizer,
                                  iter_sources(data, stats), max_length=max_length,
                                  stride=stride, batch_size=args.batch_size)
  _report_skipped("eval", stats)
  print(json.dumps({**perplexity.summarize(scores), "max_length": max_length, "stride": stride}))
  return 0


def _cmd_score(args) -> int:
  output = check_new_file(args.output) if args.output else None
  records = perplexity.read_records(args.input, field=args.field)
  loaded = _load(args, dtype=args.dtype)
  scores = perplexity.score_texts(loaded.model, loaded.params, loaded.tokenizer,
                                  [r[args.field] for r in records], max_length=args.max_length,
                                  stride=args.stride, batch_size=args.batch_size)
  lines = "".join(json.dumps({**record, **score.as_dict()}, ensure_ascii=False) + "\n"
                  for record, score in zip(records, scores))
  if output is None:
    sys.stdout.write(lines)
  else:
    write_text_atomic(output, lines)
  summary = perplexity.summarize(scores)
  print(f"lmjax score: {summary['documents']} documents, {summary['tokens']} tokens: loss "
        f"{summary['loss']:.4f}, perplexity {summary['perplexity']:.3f}, bits per byte "
        f"{summary['bits_per_byte']:.4f}" if summary["tokens"] else
        f"lmjax score: {summary['documents']} documents and no token to predict",
        file=sys.stderr)
  return 0


def _cmd_plot(args) -> int:
  from lmjax.cli import plot  # noqa: PLC0415 -- matplotlib loads only for this command
  out = plot.plot_runs(args.run_dirs, args.out, metrics=args.metric, smooth=args.smooth,
                       log_scale=args.log_scale, overwrite=args.overwrite)
  print(f"wrote {out}")
  return 0


def _cmd_eval_harness(args) -> int:
  from lmjax.infer import harness  # noqa: PLC0415 -- lm-eval loads only for this command
  results = harness.run_harness(
      run_dir=args.run_dir, hf_dir=args.hf, step=args.step, tasks=args.tasks,
      num_fewshot=args.num_fewshot, limit=args.limit, include_path=args.include_path,
      batch_size=args.batch_size, dtype=args.dtype, max_length=args.max_length,
      output=args.output, online=args.online, seed=args.seed, quantize=args.quantize)
  print(harness.format_results(results))
  if args.output:
    print(f"wrote the results to {args.output}")
  return 0


def _cmd_generate(args) -> int:
  output = check_new_file(args.output) if args.output else None
  texts = complete.read_prompts(args.input) if args.input else args.prompt
  loaded = _load(args, dtype=args.dtype)
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
    print(complete.format_completions(results))
  return 0


def _cmd_serve(args) -> int:
  try:
    from lmjax.serve import server  # noqa: PLC0415 -- Starlette and uvicorn load only here
  except ImportError as e:
    if e.name not in ("starlette", "uvicorn"):
      raise
    raise UserError(f"lmjax serve needs {e.name}, which is not installed: pip install "
                    f"'lmjax[serve]'.") from None
  # Bad limits, meshes and addresses fail before the model loads.
  check_limits(max_batch=args.max_batch, max_queue=args.max_queue, max_seq_len=args.max_seq_len)
  placement = serving_placement(args.overrides)
  check_slots_divide(args.max_batch, placement)
  adapters = server.parse_adapters(args.adapter)
  server.listen(args.host, args.port).close()
  # A run's params are read straight onto the mesh; a Hugging Face model's are moved there.
  loaded = _load(args, dtype=args.dtype, mesh=placement.mesh, rules=placement.rules)
  server.serve(loaded, host=args.host, port=args.port, max_batch=args.max_batch,
               max_seq_len=args.max_seq_len, max_queue=args.max_queue, name=args.model_name,
               adapters=adapters, pooling=args.pooling, placement=placement,
               announce=lambda line: print(f"lmjax serve: {line}", flush=True))
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
  loaded = _load(args)
  model, params, tokenizer = loaded.model, loaded.params, loaded.tokenizer
  answers = [fill_mask(model, params, cloze_ids(tokenizer, text), mask_id=tokenizer.mask_id,
                       top_k=args.top_k) for text in args.text]  # every text checked first
  for number, (text, masks) in enumerate(zip(args.text, answers), 1):
    if len(args.text) > 1:  # one block per text, headed by it
      print(("\n" if number > 1 else "") + f"text {number}: {text!r}")
    for n, candidates in enumerate(masks, 1):
      print(f"mask {n}:")
      for token_id, prob in candidates:
        print(f"  {prob:.4f}  {tokenizer.decode([token_id])!r}")
  return 0


def _cmd_convert(args) -> int:
  if args.direction == "hf-to-lmjax":
    config = runs.hf_to_run(args.hf_dir, args.run_dir, allow_pickle=args.allow_pickle,
                            scan_layers=not args.no_scan, adapter=args.adapter)
    print(f"imported {args.hf_dir} as {args.run_dir} ({config.model.family}, "
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
  out = as_path(args.out)
  # Written beside --out and renamed onto it when complete, under its lock (lmjax.files): an
  # interrupted or failed run leaves no half tokenizer, and two runs never mix one directory.
  # On a bucket (no rename) the two files are uploaded in place under the lock, and removed if
  # the run fails.
  with staged_directory(out) as staging:
    stats = ReadStats()
    documents = list(iter_sources(config.data, stats))
    _report_skipped("tokenizer", stats)
    if not documents:
      raise UserError(f"data.paths {list(config.data.paths)} holds no usable text to train a "
                      f"tokenizer on: point it at files that hold text.")
    tokenizer = Tokenizer.train_bpe(documents,
                                    vocab_size=args.vocab_size or config.model.vocab_size)
    tokenizer.save(staging)
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


_COMMANDS = {"train": _cmd_train, "plan": plan_command.run, "eval": _cmd_eval, "score": _cmd_score,
             "eval-harness": _cmd_eval_harness, "plot": _cmd_plot, "generate": _cmd_generate,
             "serve": _cmd_serve, "predict": _cmd_predict,
             "fill-mask": _cmd_fill_mask, "convert": _cmd_convert, "checkpoints": _cmd_checkpoints,
             "tokenizer": _cmd_tokenizer, "data": _cmd_data}


# The command-line arguments that name files or directories, as the parser stores them.
_PATH_ARGUMENTS = {"config": "CONFIG", "run_dir": "--run-dir", "run_dirs": "RUN_DIR",
                   "hf_dir": "HF_DIR", "hf": "--hf", "out_dir": "OUT_DIR", "out": "--out",
                   "data": "--data", "input": "--input", "output": "--output",
                   "include_path": "--include-path", "adapter": "--adapter"}


# Those that may be on a bucket (gs://, s3://); the others are local only, for now. `convert`'s
# adapter directories too (lmjax-to-peft's ADAPTER_DIR, which `data` calls OUT_DIR for its local
# output, and hf-to-lmjax's --adapter), and the files of the commands below. Still local only:
# `eval-harness --include-path` (lm-eval walks it with os.walk), and the OUT_DIR of `lmjax data`
# (array_record's writer opens local files only; see docs/pod.md).
_REMOTE_ARGUMENTS = {"run_dir", "run_dirs", "hf_dir", "hf", "data"}
_REMOTE_IN_COMMAND = {"convert": {"out_dir", "adapter"}, "plot": {"out"},
                      "generate": {"input", "output"}, "score": {"input", "output"},
                      "predict": {"input", "output"}, "tokenizer": {"out"},
                      "eval-harness": {"output"}}


def _check_paths(args) -> None:
  """Every path argument is local, or a usable bucket's where remote ones are read
  (lmjax.storage)."""
  remote = _REMOTE_ARGUMENTS | _REMOTE_IN_COMMAND.get(args.command, set())
  for name, flag in _PATH_ARGUMENTS.items():
    value = getattr(args, name, None)
    if isinstance(value, (str, list)):
      if name not in remote:
        check_local(value, what=flag)
      else:
        check_path(value, what=flag)


# The errors of a write the storage refused (DESIGN.md's exit 4, and only these).
_STORAGE_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                    errno.EFBIG}


def _unreadable(e: OSError) -> bool:
  """Whether a permission error is a read of an existing path this user may not read (errno
  alone does not tell a refused read from a refused write)."""
  path = e.filename
  return (e.errno in (errno.EACCES, errno.EPERM) and isinstance(path, (str, bytes, os.PathLike))
          and os.path.lexists(path) and not os.access(path, os.R_OK))


def main(argv: Sequence[str] | None = None) -> int:
  args = cli_parser.parse(argv)
  app.configure_process()
  try:
    _check_paths(args)
    return _COMMANDS[args.command](args)
  except UserError as e:
    print(f"lmjax {args.command}: error: {e}", file=sys.stderr)
    return getattr(e, "exit_code", 2)
  except OSError as e:
    if _unreadable(e):  # a path the user gave that this user may not read: theirs, exit 2
      print(f"lmjax {args.command}: error: {e}: this user may not read it. Fix its permissions "
            f"or give another path.", file=sys.stderr)
      return 2
    if e.errno in _STORAGE_REFUSED:  # full, read-only or forbidden: the storage's, exit 4
      print(f"lmjax {args.command}: error: {e}. Free disk space or fix the permissions, then "
            f"rerun the same command.", file=sys.stderr)
      return WriteFailed.exit_code
    # Anything else (no such file, a directory or a device where a file was expected, …) is
    # a path the user gave: exit 2, with what the system said about it.
    print(f"lmjax {args.command}: error: {e}. Check the path.", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"lmjax {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
