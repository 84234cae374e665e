"""The seqio/TFDS backend (imports TensorFlow; the rest of the suite does not need it)."""

import numpy as np
import pytest

from guide_jax.data import packing, pipeline

seqio_backend = pytest.importorskip('guide_jax.data.seqio_backend')
tfds = pytest.importorskip('tensorflow_datasets')


def test_embedded_corpus_as_a_seqio_task(tiny_config):
  tiny_config.data.backend = 'seqio'
  tiny_config.data.seqio_task = seqio_backend.EMBEDDED_TASK
  data = pipeline.build(tiny_config)
  batch = next(data.train)
  assert batch['inputs'].shape == (8, 64)
  # same SentencePiece model as the embedded backend
  tiny_config.data.backend = 'embedded'
  assert data.vocab_path == pipeline.build(tiny_config).vocab_path


@pytest.mark.parametrize('task', ['c4_en', pytest.param('lm1b', marks=pytest.mark.slow)])
def test_tfds_task_packs_and_resumes_exactly(tiny_config, task):
  tiny_config.data.tokenizer = pipeline.build(tiny_config).vocab_path  # embedded-trained
  tiny_config.data.backend = 'seqio'
  tiny_config.data.seqio_task = task
  tiny_config.data.eval_batches = 1
  with tfds.testing.mock_data(num_examples=64):
    data = pipeline.build(tiny_config)
    batches = [next(data.train) for _ in range(4)]
    assert batches[0]['inputs'].shape == (8, 64)
    assert batches[0]['inputs'].max() < tiny_config.model.vocab_size
    again = pipeline.build(tiny_config)
    next(again.train)
    next(again.train)
    state = again.train.get_state()
    resumed = pipeline.build(tiny_config)
    resumed.train.set_state(state)
    for want in batches[2:]:
      got = next(resumed.train)
      for k in packing.FIELDS:
        np.testing.assert_array_equal(got[k], want[k])


def test_tfds_task_needs_a_tokenizer(tiny_config):
  tiny_config.data.backend = 'seqio'
  tiny_config.data.seqio_task = 'c4_en'
  with pytest.raises(ValueError, match='data.tokenizer is empty'):
    pipeline.build(tiny_config)


def test_streaming_packer_state():
  docs = [np.arange(n, dtype=np.int32) + 10 * n for n in (5, 9, 3, 12, 7, 20, 4)]
  make = lambda skip: iter(docs[skip:])
  a = seqio_backend.StreamingBatches(make, 2, 4)
  first = [next(a) for _ in range(4)]
  b = seqio_backend.StreamingBatches(make, 2, 4)
  next(b)
  b2 = seqio_backend.StreamingBatches(make, 2, 4)
  b2.set_state(b.get_state())
  for want in first[1:]:
    np.testing.assert_array_equal(next(b2)['inputs'], want['inputs'])
  stream = np.concatenate(docs)
  np.testing.assert_array_equal(first[1]['inputs'][0], stream[8:12])
