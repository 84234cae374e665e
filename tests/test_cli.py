"""Every command's bad input is one `error:` line and exit 2 (guide_jax/cli.py)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('args,expected', [
    (['--config=experiments/no_such_file.py'], "--config: [Errno 2] No such file"),
    (['--config=experiments/lm_tiny.py', '--config.model.nonexistent=1'],
     "the field 'nonexistent', which the config does not have"),
    (['--config=experiments/lm_tiny.py', '--config.train.steps=abc'],
     'flag --config.train.steps=abc: invalid literal'),
    (['--config=BAD'], '--config: invalid syntax'),
    (['--config=experiments/guide_1b.py:nolocal'], "the only variant is 'runlocal'"),
    (['--config=experiments/lm_tiny.py', '--config.model.attention_kernel=cudnn'],
     "model.attention_kernel='cudnn' needs an NVIDIA GPU, and this step is compiled for cpu"),
    (['--config=experiments/lm_tiny.py', '--config.model.attention_kernel=splash',
      '--config.data.seq_len=96', '--config.model.splash_block_q=64'],
     'data.seq_len=96 is not divisible by model.splash_block_q=64'),
    (['--config=experiments/guide_tiny.py', '--config.loss.on_policy.fraction=0.5',
      '--config.loss.on_policy.prompt_len=40', '--config.loss.on_policy.new_tokens=40'],
     'loss.on_policy.prompt_len + new_tokens = 80 exceeds data.seq_len=64'),
])
def test_config_file_errors_are_one_line(args, expected, tmp_path):
  args = [a.replace('BAD', str(tmp_path / 'bad.py')) for a in args]
  (tmp_path / 'bad.py').write_text('def get_config(:\n')
  work = tmp_path / 'run'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  r = subprocess.run([sys.executable, '-m', 'guide_jax.main', *args, f'--workdir={work}'],
                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert lines[0].startswith('error: ') and expected in lines[0], lines[0]
  assert not work.exists()


@pytest.mark.parametrize('overrides,expected', [
    ({'guide.init': 'foo'}, "guide.init='foo' must be one of"),
    ({'guide.blocks': 'some'}, "guide.blocks='some' must be one of"),
    ({'guide.unembed': True}, 'guide.unembed=True needs an untied student'),
    ({'model.n_layers': 3, 'guide.blocks': 'all'}, "guide.blocks='all' maps each student block"),
    ({'teacher.attention_kernel': 'cudnn'},
     "teacher model.attention_kernel='cudnn' needs an NVIDIA GPU"),
    ({'teacher.attention_kernel': 'flash'}, "teacher.attention_kernel='flash' must be one of"),
])
def test_guide_settings_that_would_be_ignored_are_refused(overrides, expected, tmp_path):
  """guide_tiny's teacher is never trained: these fail in validation, before it, and
  before the workdir is made. (In process: that such a ConfigError is one `error:` line
  and exit 2 from the command, the cases above and below show.)"""
  from guide_jax import config as config_lib
  from guide_jax import sweep
  from guide_jax.train import trainer
  config = sweep.apply_overrides(config_lib.load_experiment_module('guide_tiny').get_config(),
                                 overrides)
  work = tmp_path / 'run'
  with pytest.raises(config_lib.ConfigError) as error:
    trainer.train(config, work)
  assert expected in str(error.value) and '\n' not in str(error.value)
  assert not work.exists()


@pytest.mark.parametrize('module,args,expected', [
    ('main', ['--config=experiments/lm_tiny.py', '--workdir=FILE'], 'is a file, not a directory'),
    ('demo', ['--config=experiments/no_such.py', '--workdir=NEW'], '--config: [Errno 2]'),
    ('study', ['--config=experiments/study_cpu.py', '--sweep=nope', '--study_dir=NEW'],
     "--sweep=nope: unknown sweep 'nope'"),
    ('report', ['--study_dir=EMPTY'], 'has no study.json'),
    ('bench', ['--config=experiments/bench_cpu.py', '--arms=bogus'], "--arms has unknown"),
    ('aot', ['--config=experiments/lm_tiny.py'], 'no --topology'),
    ('sweep', ['--config=experiments/no_such.py', '--root=NEW'], 'is not a file'),
])
def test_every_command_reports_bad_input_in_one_line(module, args, expected, tmp_path):
  (tmp_path / 'file').write_text('keep me')
  (tmp_path / 'empty').mkdir()
  args = [a.replace('FILE', str(tmp_path / 'file')).replace('NEW', str(tmp_path / 'new'))
          .replace('EMPTY', str(tmp_path / 'empty')) for a in args]
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  r = subprocess.run([sys.executable, '-m', f'guide_jax.{module}', *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert lines[0].startswith('error: ') and expected in lines[0], lines[0]
  assert (tmp_path / 'file').read_text() == 'keep me' and not (tmp_path / 'new').exists()
  assert not any((tmp_path / 'empty').iterdir())
