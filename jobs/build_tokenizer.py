"""Rebuild the `tiny` preset's shipped tokenizer (urg_ray/assets/tiny-tokenizer.json).

    python jobs/build_tokenizer.py

Trained on the synthetic generator's text plus the standard library's docstrings (English
prose that ships with Python), so it needs no download. Rebuilding changes token ids: models
saved with the old file keep working (their folder has its own tokenizer), the `tiny` preset
does not stay bit-identical.
"""

from urg_ray.presets import TINY_TOKENIZER, english_texts, train_tiny_tokenizer
from urg_ray.synthetic import corpus

if __name__ == "__main__":
    tokenizer = train_tiny_tokenizer([*corpus(n_records=3000, seed=1234), *english_texts()])
    tokenizer.save(str(TINY_TOKENIZER))
    print(f"wrote {TINY_TOKENIZER} ({tokenizer.get_vocab_size()} tokens)")
