"""Run a sweep locally, one run after another, skipping runs that already finished.

  python -m guide_jax.study --config=experiments/study_cpu.py --sweep=main \
      --study_dir=workdirs/cpu_study/main --teacher_dir=workdirs/cpu_study/teacher

The config's teacher (`teacher.pretrain`) is trained once into --teacher_dir (default
STUDY_DIR/teacher), and every run distils from that same teacher. Each run trains in
STUDY_DIR/<run name> and writes final.json when it is done; rerunning the command skips
those and resumes an interrupted run from its checkpoint, so the sweep survives being
killed. --runs=REGEX selects runs by name; --list prints each run as a
`python -m guide_jax.main` command (the launchers in launch/ use the same list).
Config fields can be overridden for every run: --config.train.steps=2.

--parallel=N trains N runs at a time, each in its own process pinned to its share of this
machine's cores (the teacher first, on all of them). On a small CPU this beats one process
using every core: XLA:CPU scales poorly across cores for small models (two one-core
processes gave 1.26x the tokens/s of one two-core process here). Each run's output goes to
STUDY_DIR/<run>/study.log; SIGTERM is passed on, so every run saves a checkpoint.

Then: python -m guide_jax.report --study_dir=STUDY_DIR
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from guide_jax import cli

FLAGS = flags.FLAGS
FINAL = 'final.json'   # written last in each run's workdir: the run is done
CACHES = 'teacher_logits'  # STUDY_DIR/teacher_logits/<cache_name>: the shared caches


def plan(config, config_path: str, sweep_name: str, study_dir: pathlib.Path,
         teacher_dir: pathlib.Path | None = None):
  """(teacher pretraining config or None, teacher dir, every run of the sweep)."""
  from guide_jax import experiment_file, sweep
  entries = sweep.entries(experiment_file.load_module(config_path.split(':')[0]), sweep_name)
  teacher_dir = teacher_dir or study_dir / 'teacher'
  pretrain = config.teacher.pretrain if config.teacher.pretrain else None
  if pretrain is not None:  # every run reads the one shared teacher
    config = config.copy_and_resolve_references()
    config.teacher.pretrain = type(config.teacher.pretrain)()
    config.teacher.checkpoint = str(teacher_dir)
  runs = sweep.runs(config, entries, study_dir)
  for run in runs:  # runs with teacher.cache_top_k read the cache of their data order
    if run.config.teacher.cache_top_k and not run.config.teacher.logits_dir:
      run.config.teacher.logits_dir = str(study_dir / CACHES / cache_name(run.config))
      run.overrides['teacher.logits_dir'] = run.config.teacher.logits_dir
  return pretrain, teacher_dir, runs


def cache_name(config) -> str:
  """The shared teacher-logits cache of a run: one per data order (and k, temperature,
  teacher dtype), whatever the arm, so arms that share the data seed share it."""
  from guide_jax.train import teacher_cache
  key = json.dumps([teacher_cache.data_order(config), config.teacher.cache_top_k,
                    float(config.loss.temperature), config.teacher.dtype], sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:8]
  return f'seed{config.data.seed}-k{config.teacher.cache_top_k}-{digest}'


def build_caches(runs: list, log=print) -> None:
  """Build (or finish) every cache the runs read, each for its longest run's steps. The
  build's wall time goes to CACHE/build.json (summed over resumed builds), for the report."""
  from guide_jax import teacher_logits
  groups: dict[str, list] = {}
  for run in runs:
    if run.config.teacher.cache_top_k:
      groups.setdefault(run.config.teacher.logits_dir, []).append(run)
  for directory, members in groups.items():
    steps = max(r.config.train.steps for r in members)
    record = pathlib.Path(directory) / 'build.json'
    done = json.loads(record.read_text()) if record.exists() else {'seconds': 0.0}
    if done.get('steps', 0) >= steps:
      continue
    log(f'teacher logits -> {directory} ({steps} steps, k={members[0].config.teacher.cache_top_k}'
        f', for {", ".join(r.name for r in members)})')
    start = time.perf_counter()
    result = teacher_logits.build(members[0].config, directory,
                                 members[0].config.teacher.cache_top_k, steps, log=log)
    done = {'seconds': done['seconds'] + time.perf_counter() - start, 'steps': steps,
            'tokens_per_s': result.tokens_per_s,
            'bytes_per_token': result.manifest['bytes_per_token']}
    record.write_text(json.dumps(done, indent=2))


def record_sweep(study_dir: pathlib.Path, config_path: str, sweep_name: str,
                 teacher_dir: pathlib.Path, runs: list) -> None:
  """STUDY_DIR/study.json: the whole sweep, whatever --runs says. Another sweep of the same
  config run into the same directory (study_regime's `cached` beside `main`) adds its runs,
  so that the report covers both."""
  path = study_dir / 'study.json'
  old = json.loads(path.read_text()) if path.exists() else {}
  same = old.get('config') == str(config_path)
  sweeps = sorted(set(old.get('sweeps', [old.get('sweep')]) if same else []) - {None}
                  | {sweep_name})
  study_dir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({
      'config': str(config_path), 'sweep': sweep_name, 'sweeps': sweeps,
      'teacher_dir': str(teacher_dir),
      'runs': {**(old.get('runs', {}) if same else {}),
               **{r.name: r.overrides for r in runs}}}, indent=2, default=str))


def select(runs: list, only: str) -> list:
  return [r for r in runs if re.search(only, r.name)] if only else runs


def run_all(config, config_path: str, sweep_name: str, study_dir: pathlib.Path,
            teacher_dir: pathlib.Path | None = None, only: str = '',
            log=print, caches_only: bool = False) -> list[dict]:
  """Train the teacher (once), build the teacher-logits caches the unfinished runs read
  (once per data order), and train every unfinished run; the finals of all selected runs.
  `caches_only` stops after the caches."""
  from guide_jax.train import trainer
  pretrain, teacher_dir, runs = plan(config, config_path, sweep_name, study_dir, teacher_dir)
  record_sweep(study_dir, config_path, sweep_name, teacher_dir, runs)
  runs = select(runs, only)
  if pretrain is not None and not (teacher_dir / FINAL).exists():
    log(f'teacher -> {teacher_dir}')
    result = trainer.train(pretrain, teacher_dir)
    if result['interrupted']:  # a half-trained teacher must not look finished
      log('the teacher was interrupted; rerun the same command to resume it')
      return []
    _finish(result, pretrain, teacher_dir, 'teacher', {})
  build_caches([r for r in runs if not (pathlib.Path(r.workdir) / FINAL).exists()], log)
  if caches_only:
    return []
  finals = []
  for i, run in enumerate(runs):
    workdir = pathlib.Path(run.workdir)
    final_path = workdir / FINAL
    if final_path.exists():
      log(f'[{i + 1}/{len(runs)}] {run.name}: finished before, skipped')
    else:
      log(f'[{i + 1}/{len(runs)}] {run.name} -> {run.workdir}')
      start = time.perf_counter()
      result = trainer.train(run.config, workdir)
      if result['interrupted']:
        log(f'{run.name} was interrupted; rerun the same command to resume it')
        break
      _finish(result, run.config, workdir, run.name, run.overrides,
              time.perf_counter() - start)
    finals.append(json.loads(final_path.read_text()))
  return finals


def run_parallel(config, config_path: str, sweep_name: str, study_dir: pathlib.Path,
                 teacher_dir: pathlib.Path | None, only: str, workers: int,
                 config_overrides: list[str], log=print) -> list[str]:
  """`run_all` with `workers` runs at a time, each a child `guide_jax.study` process for one
  run pinned to its share of the cores (the teacher first, on all of them). The names of
  the runs that failed; SIGTERM is passed on to every child."""
  pretrain, teacher_dir, runs = plan(config, config_path, sweep_name, study_dir, teacher_dir)
  queue = [r for r in select(runs, only) if not (pathlib.Path(r.workdir) / FINAL).exists()]
  cpus = sorted(os.sched_getaffinity(0))
  workers = max(1, min(workers, len(cpus)))
  shares = [cpus[i::workers] for i in range(workers)]

  def start(name_regex: str, cores: list[int], logfile: pathlib.Path,
            *extra: str) -> subprocess.Popen:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, 'a') as out:
      return subprocess.Popen(
          [sys.executable, '-m', 'guide_jax.study', f'--config={config_path}',
           *config_overrides, f'--sweep={sweep_name}', f'--study_dir={study_dir}',
           f'--teacher_dir={teacher_dir}', f'--runs={name_regex}',
           f'--cpus={",".join(map(str, cores))}', *extra], stdout=out,
          stderr=subprocess.STDOUT)

  def wait_for(child: subprocess.Popen, name: str) -> int:
    children[0] = (child, name)  # in `children` meanwhile, so SIGTERM reaches it
    code = child.wait()
    del children[0]
    return code

  children: dict[int, tuple[subprocess.Popen, str]] = {}  # slot -> (process, run name)
  stopping = []
  def forward(signum, frame):  # a preemption notice: every run checkpoints and exits
    stopping.append(signum)
    for child, _ in children.values():
      child.send_signal(signal.SIGTERM)
  previous = signal.signal(signal.SIGTERM, forward)
  failed = []
  try:
    if pretrain is not None and not (teacher_dir / FINAL).exists():
      log(f'teacher -> {teacher_dir} (cores {cpus})')
      code = wait_for(start('^$', cpus, teacher_dir / 'study.log'), 'teacher')  # no run
      if stopping:
        log('the teacher was interrupted; rerun the same command to resume it')
        return failed
      if code != 0 or not (teacher_dir / FINAL).exists():
        return ['teacher']
    if any(r.config.teacher.cache_top_k for r in queue):  # before the runs, on every core
      log(f'teacher logits -> {study_dir / CACHES} (cores {cpus})')
      names = '|'.join(f'^{re.escape(r.name)}$' for r in queue)
      code = wait_for(start(names, cpus, study_dir / CACHES / 'study.log',
                            '--build_caches_only'), 'teacher logits')
      if stopping or code != 0:
        return [] if stopping else ['teacher logits']
    while children or (queue and not stopping):
      for slot in range(workers):
        if slot not in children and queue and not stopping:
          run = queue.pop(0)
          log(f'{run.name} -> {run.workdir} (cores {shares[slot]})')
          children[slot] = (start(f'^{re.escape(run.name)}$', shares[slot],
                                  pathlib.Path(run.workdir) / 'study.log'), run.name)
      time.sleep(1.0)
      for slot, (child, name) in list(children.items()):
        if child.poll() is not None:
          del children[slot]
          if child.returncode != 0:
            failed.append(name)
            log(f'{name} failed (exit {child.returncode}); see its study.log')
  finally:
    signal.signal(signal.SIGTERM, previous)
    for child, _ in children.values():
      child.send_signal(signal.SIGTERM)
      child.wait()
  return failed


def _finish(result: dict, config, workdir: pathlib.Path, name: str, overrides: dict,
            seconds: float | None = None) -> None:
  import jax  # JAX runs by now; imported late so that --cpus pins cores before it starts
  final = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
  final.update(name=name, overrides=overrides, wall_s=seconds, eval_split=config.data.eval_split,
               tokens=config.train.steps * config.data.global_batch_size * config.data.seq_len,
               student_params=sum(math.prod(x.shape) for x in
                                  jax.tree.leaves(result['params'])))
  tmp = workdir / f'{FINAL}.tmp'
  tmp.write_text(json.dumps(final, indent=2, default=str))
  tmp.replace(workdir / FINAL)


def define_flags() -> None:
  """Command-line flags (defined only when run as a program, so importing is free)."""
  config_flags.DEFINE_config_file('config', None, 'Experiment file with get_sweep.')
  flags.DEFINE_string('sweep', 'main', 'Name passed to get_sweep(name).')
  flags.DEFINE_string('study_dir', None, 'Root of the runs.')
  flags.DEFINE_string('teacher_dir', '', 'Shared teacher; default STUDY_DIR/teacher.')
  flags.DEFINE_string('runs', '', 'Only runs whose name matches this regex.')
  flags.DEFINE_bool('list', False, 'Print the runs as commands; train nothing.')
  flags.DEFINE_integer('parallel', 1, 'Runs trained at a time, one process each.')
  flags.DEFINE_string('cpus', '', 'Comma-separated cores this process may use (set by '
                      '--parallel for its children).')
  flags.DEFINE_bool('build_caches_only', False, 'Build the teacher-logits caches of the '
                    'selected runs and stop (--parallel runs this first).')
  flags.mark_flags_as_required(['config', 'study_dir'])


def main(argv):
  del argv
  if FLAGS.cpus:  # before JAX starts its thread pools
    os.sched_setaffinity(0, {int(c) for c in FLAGS.cpus.split(',')})

  def body():
    config = cli.config_value(FLAGS['config'])
    study_dir = pathlib.Path(FLAGS.study_dir)
    teacher_dir = pathlib.Path(FLAGS.teacher_dir) if FLAGS.teacher_dir else None
    config_path = config_flags.get_config_filename(FLAGS['config'])
    if FLAGS.list:
      _, teacher_dir, runs = plan(config, config_path, FLAGS.sweep, study_dir, teacher_dir)
      for run in select(runs, FLAGS.runs):
        print(' '.join(['python -m guide_jax.main', f'--config={config_path}',
                        f'--config.teacher.checkpoint={teacher_dir}', *run.flags()]))
      return 0
    if FLAGS.parallel > 1:
      overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
      failed = run_parallel(config, config_path, FLAGS.sweep, study_dir, teacher_dir,
                            FLAGS.runs, FLAGS.parallel, overrides)
      if failed:
        print(f'error: {", ".join(failed)} failed; see study.log in each run\'s directory',
              file=sys.stderr)
        return 1
    else:
      run_all(config, config_path, FLAGS.sweep, study_dir, teacher_dir, FLAGS.runs,
              caches_only=FLAGS.build_caches_only)
    print(f'report: python -m guide_jax.report --study_dir={study_dir}')
    return 0

  cli.run(body)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
