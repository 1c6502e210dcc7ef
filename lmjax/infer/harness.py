"""EleutherAI's lm-evaluation-harness, backed by lmjax: the `lmjax` model and `lmjax eval-harness`.

    import lm_eval, lmjax.infer.harness                  # importing registers the model "lmjax"
    lm_eval.simple_evaluate(model="lmjax", model_args="run_dir=runs/demo", tasks=["arc_easy"])
    lm_eval.simple_evaluate(model=lmjax.infer.harness.LmjaxLM(hf="llama-dir"), tasks=[...])

`LmjaxLM` answers the harness' three requests with lmjax's jitted code: `loglikelihood`
(lmjax.infer.continuation_log_likelihoods: batched, sorted by length, padded to a few
bucketed lengths), `loglikelihood_rolling` (the disjoint windows of lmjax.infer.perplexity, the
harness' own scheme) and `generate_until` (greedy, or sampled as the task asks, cut at the
task's stop strings). Tokenization follows the harness' `TemplateLM` (the context's trailing
spaces move to the continuation; an empty context is the BOS token, else EOS).

`lmjax eval-harness` is offline unless `--online`: a task whose dataset is not in the local
Hugging Face cache fails at once, saying so, instead of retrying the network.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax

from lmjax.errors import UserError
from lmjax.extras import missing_message, require
from lmjax.files import check_new_file, write_text_atomic
from lmjax.infer import continuation_log_likelihoods
from lmjax.infer.complete import GenerationSettings, complete_batch
from lmjax.infer.perplexity import prefix_id, require_language_model, window_requests
from lmjax.run.loader import Loaded, load

log = logging.getLogger(__name__)

# The harness (and `datasets`, `torch`) are imported only by the commands that use them.
try:
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
except ImportError:  # lmjax works without lm-eval; LmjaxLM then says how to get it
  TemplateLM, register_model = object, lambda *names: (lambda cls: cls)

_NEEDED_FOR = "`lmjax eval-harness`"
_PACKAGE = "lm-eval (lm-evaluation-harness)"


def _int(value, name: str, *, low: int = 1) -> int | None:
  if value is None or value == "":
    return None
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise UserError(f"{name}={value!r} is not an integer.") from None
  if number < low:
    raise UserError(f"{name}={value} must be >= {low}.")
  return number


@register_model("lmjax")
class LmjaxLM(TemplateLM):
  """An lmjax causal LM for lm-evaluation-harness: a run (`run_dir`, `step`) or an HF directory
  (`hf`), or one already `loaded` (lmjax.load)."""

  def __init__(self, run_dir: str | None = None, hf: str | None = None, step=None,
               dtype: str = "float32", batch_size=16, max_length=None, max_gen_toks=256,
               loaded: Loaded | None = None, seed=0, quantize: str | None = None,
               **_ignored):  # device, max_batch_size
    if TemplateLM is object:
      raise UserError(missing_message(_PACKAGE, extra="eval", needed_for=_NEEDED_FOR))
    super().__init__()
    if loaded is None and (run_dir is None) == (hf is None):
      raise UserError("give exactly one of run_dir= (an lmjax run directory) or hf= (a Hugging "
                      "Face directory or hub id).")
    self.loaded = loaded or load(run_dir or hf, step=_int(step, "step", low=0), dtype=dtype,
                                 require_tokenizer=True, kind="run" if run_dir else "hf",
                                 quantization={"scheme": quantize} if quantize else None)
    require_language_model(self.loaded.model)
    cfg = self.loaded.model.config
    self._batch_size = _int(batch_size if batch_size != "auto" else None, "batch_size") or 16
    self._max_length = _int(max_length, "max_length") or cfg.max_seq_len
    if self._max_length > cfg.max_seq_len:
      raise UserError(f"max_length={self._max_length} is more than the model's context "
                      f"model.max_seq_len={cfg.max_seq_len}.")
    self.max_gen_toks = _int(max_gen_toks, "max_gen_toks")
    self._seed = _int(seed, "seed", low=0) or 0  # sampled generation (tasks with do_sample)
    tokenizer = self.loaded.tokenizer
    if tokenizer.eos_id is None and tokenizer.bos_id is None:
      raise UserError("the model's tokenizer has neither an EOS nor a BOS token, which the "
                      "harness needs to score a continuation of an empty context.")

  # -- what TemplateLM asks for ------------------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    tokenizer = self.loaded.tokenizer
    return tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.bos_id

  @property
  def prefix_token_id(self) -> int:
    return prefix_id(self.loaded.tokenizer)

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return str(self.loaded.directory).replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    return self.loaded.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

  def tok_decode(self, tokens: Sequence[int]) -> str:
    return self.loaded.tokenizer.decode(list(tokens))

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs
                            ) -> list[tuple[float, bool]]:
    """requests: ((context, continuation), context ids, continuation ids) each."""
    pairs = [(context, continuation) for _, context, continuation in requests]
    results = continuation_log_likelihoods(self.loaded.model, self.loaded.params, pairs,
                                           max_length=self.max_length,
                                           batch_size=self._batch_size,
                                           progress=self._progress(len(pairs), disable_tqdm))
    for (key, _, _), result in zip(requests, results):
      self.cache_hook.add_partial("loglikelihood", key, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """The log-likelihood of each whole string, in disjoint windows of max_length tokens."""
    windows, owners = [], []
    for n, request in enumerate(requests):
      (string,) = request.args
      pieces = window_requests(self.tok_encode(string), prefix=self.prefix_token_id,
                               max_length=self.max_length, stride=self.max_length)
      windows += pieces
      owners += [n] * len(pieces)
    results = continuation_log_likelihoods(self.loaded.model, self.loaded.params, windows,
                                           max_length=self.max_length,
                                           batch_size=self._batch_size,
                                           progress=self._progress(len(windows), disable_tqdm))
    totals = [0.0] * len(requests)
    for n, (log_p, _) in zip(owners, results):
      totals[n] += log_p
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Each context continued (greedily unless the task samples) up to its first stop string
    (`until`, default the EOS token's text), `max_gen_toks` tokens at most."""
    groups: dict[str, list[int]] = {}  # requests with the same settings decode together
    for n, request in enumerate(requests):
      groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(n)
    outputs: list[str] = [""] * len(requests)
    progress = self._progress(len(requests), disable_tqdm)
    for key, members in groups.items():
      settings = dict(json.loads(key))
      until = settings.pop("until", None)
      until = [until] if isinstance(until, str) else list(until or [])
      eos_text = self.tok_decode([self.eot_token_id])
      if eos_text and eos_text not in until:
        until.append(eos_text)
      max_new = _int(settings.pop("max_gen_toks", None), "max_gen_toks") or self.max_gen_toks
      sample = bool(settings.pop("do_sample", False))
      temperature = float(settings.pop("temperature", 0.0)) if sample else 0.0
      top_k, top_p = settings.pop("top_k", None), settings.pop("top_p", None)
      room = self.max_length - max_new
      if room < 1:
        raise UserError(f"the task asks for max_gen_toks={max_new}, which leaves no room for a "
                        f"context in max_length={self.max_length}: lower max_gen_toks.")
      generation = GenerationSettings(
          max_new_tokens=max_new, temperature=temperature,
          top_k=None if top_k in (None, 0) else int(top_k),
          top_p=None if top_p is None else float(top_p), seed=self._seed,
          eos_ids=(self.eot_token_id,), stop=tuple(s for s in until if s))
      for start in range(0, len(members), self._batch_size):
        batch = members[start:start + self._batch_size]
        # the newest tokens of a context too long for max_length, as the harness' HF model does
        prompts = [self.tok_encode(requests[n].args[0])[-room:] or [self.prefix_token_id]
                   for n in batch]
        texts = complete_batch(self.loaded, prompts, generation, echo=False,
                               key=jax.random.fold_in(jax.random.key(self._seed), start))
        for n, (text,) in zip(batch, texts):
          outputs[n] = text
          self.cache_hook.add_partial("generate_until", requests[n].args, text)
        progress(len(batch))
    return outputs

  def _progress(self, total: int, disable: bool):
    import tqdm  # noqa: PLC0415 -- a bar only where the harness asks for one
    bar = tqdm.tqdm(total=total, disable=disable or total == 0, desc="lmjax")
    def advance(n: int) -> None:
      bar.update(n)
      if bar.n >= total:
        bar.close()
    return advance


# -- the command --------------------------------------------------------------------------------


def _task_manager(include_path: Sequence[str], tasks: Sequence[str]):
  """The harness' task index: of the --include-path directories alone when they hold every
  task asked for (indexing the ~15,000 built-in tasks takes seconds), else with the built-in."""
  from lm_eval.tasks import TaskManager  # noqa: PLC0415
  for path in include_path:
    if not os.path.isdir(path):
      raise UserError(f"--include-path {path} is not a directory of task YAML files.")
  if include_path:
    local = TaskManager(include_path=list(include_path), include_defaults=False)
    if set(tasks) <= set(local.all_tasks):
      return local
    # A name in neither index is refused before a combined index is built (seconds more); the
    # built-in index is the process' cached one.
    check_tasks(_builtin_task_manager(), tasks, also=local.all_tasks)
    return TaskManager(include_path=list(include_path))
  return _builtin_task_manager()


@functools.cache
def _builtin_task_manager():
  """The index of the built-in tasks, built once per process (a notebook or script that runs
  the harness again does not scan the ~15,000 task files again); tasks load from it afresh."""
  from lm_eval.tasks import TaskManager  # noqa: PLC0415
  return TaskManager()


def check_tasks(manager, tasks: Sequence[str], also: Sequence[str] = ()) -> list[str]:
  """The task names, each known to the harness (built in, or under an --include-path; `also`:
  names known besides the manager's)."""
  known = set(manager.all_tasks) | set(also)
  for task in tasks:
    if task not in known and not pathlib.Path(task).is_file():
      close = difflib.get_close_matches(task, sorted(known), n=5, cutoff=0.6)
      hint = f" Close ones: {', '.join(close)}." if close else ""
      raise UserError(f"--tasks names {task!r}, which lm-evaluation-harness does not know.{hint} "
                      f"A task of your own: a YAML file in a directory given with "
                      f"--include-path (docs/evaluate.md).")
  return list(tasks)


def _offline(online: bool) -> None:
  """Without --online, datasets and the Hub read only their local cache (set before either is
  imported, since both read these at import)."""
  if not online:
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
      os.environ.setdefault(name, "1")


def _download_problem(e: BaseException) -> str | None:
  """Why a task's data could not be had, if `e` says it is the network or the Hub."""
  text = f"{type(e).__name__}: {e}"
  hints = ("Couldn't reach", "OfflineModeIsEnabled", "LocalEntryNotFound", "offline mode",
           "ConnectionError", "Name or service not known", "DatasetNotFoundError")
  return text if any(h in text for h in hints) else None


def run_harness(*, run_dir: str | None, hf_dir: str | None, step: int | None, tasks: Sequence[str],
                num_fewshot: int | None = None, limit: float | None = None,
                include_path: Sequence[str] = (), batch_size: int = 16, dtype: str = "float32",
                max_length: int | None = None, output: str | None = None, online: bool = False,
                seed: int = 0, quantize: str | None = None) -> dict[str, Any]:
  """`lmjax eval-harness`: the harness' results (its `results` dict, per task) for the model,
  its projections held quantized with `quantize` (int8, int4: --quantize)."""
  _offline(online)
  if output is not None:
    output = check_new_file(output)
  if num_fewshot is not None and num_fewshot < 0:
    raise UserError(f"--num-fewshot must be >= 0, got {num_fewshot}.")
  if limit is not None and not limit > 0:
    raise UserError(f"--limit must be > 0 (a count, or a fraction below 1), got {limit}.")
  if not tasks:
    raise UserError("--tasks is empty: name one or more tasks, comma-separated.")
  lm_eval = require("lm_eval", extra="eval", needed_for=_NEEDED_FOR, package=_PACKAGE)
  manager = _task_manager(include_path, tasks)
  tasks = check_tasks(manager, tasks)
  lm = LmjaxLM(run_dir=run_dir, hf=hf_dir, step=step, dtype=dtype, batch_size=batch_size,
               max_length=max_length, seed=seed, quantize=quantize)
  try:
    with _without_environment_probes():
      results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot,
                                        limit=limit, task_manager=manager, log_samples=False,
                                        random_seed=seed, numpy_random_seed=seed,
                                        torch_random_seed=seed, fewshot_random_seed=seed)
  except (OSError, ValueError, RuntimeError) as e:
    problem = _download_problem(e)
    if problem is None:
      raise
    raise UserError(
        f"a task's dataset is not in the local Hugging Face cache and could not be downloaded "
        f"({problem}). Rerun with --online to download it (it is cached for later runs), or "
        f"evaluate on a task of your own with --include-path.") from None
  if output is not None:
    from lm_eval.utils import handle_non_serializable  # noqa: PLC0415
    write_text_atomic(output, json.dumps(
        {k: results[k] for k in ("results", "versions", "n-shot", "configs") if k in results},
        indent=2, default=handle_non_serializable) + "\n")
  return results


@contextlib.contextmanager
def _without_environment_probes():
  """lm-eval's simple_evaluate with its results' environment metadata left out: it runs torch's
  collect_env (seconds of subprocesses) and `git describe` in the working directory (which
  prints "fatal: not a git repository" outside one), and lmjax keeps neither in what it writes.
  lm-eval has no switch for them, so its two module-level helpers are swapped for the call."""
  from lm_eval import evaluator  # noqa: PLC0415
  saved = evaluator.add_env_info, evaluator.get_git_commit_hash
  evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda storage: None), (lambda: None)
  try:
    yield
  finally:
    evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def format_results(results: dict[str, Any]) -> str:
  from lm_eval.utils import make_table  # noqa: PLC0415
  return make_table(results)
