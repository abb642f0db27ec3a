"""Constants of the HE-SNR definition (see docs/metric.md)."""
import math

#: Size of the candidate set: the entropy is taken over the k largest logits.
DEFAULT_K = 10

#: Threshold on the top-k entropy: the midpoint of ln 3 and ln 4 (1.2424533...).
#: A token is "high entropy" when H_k > DEFAULT_THRESHOLD (strict).  Some notes on
#: the paper print 0.897, which is (ln 2 + ln 3) / 2; the formula is what we implement.
DEFAULT_THRESHOLD = (math.log(3.0) + math.log(4.0)) / 2.0

#: Number of equal-width histogram bins of H_k on [0, ln k].
DEFAULT_NUM_BINS = 512

#: Default names of the scoring-mask categories 1, 2, 3 (0 means "not scored").
DEFAULT_CATEGORY_NAMES = ("action", "thought", "observation")
