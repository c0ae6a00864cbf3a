"""Real sentences of different lengths for the parity checks of text models (fixed, so that the
figures in manifests are comparable from one run to the next)."""

SENTENCES: tuple[str, ...] = (
    "Hello!",
    "The cat sat on the mat.",
    "A man is playing a guitar on a street corner while people walk past.",
    "Triton serves several versions of a model at once and routes each request to one of them.",
    "Paris is the capital of France.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates by half a "
    "percentage point, the largest increase in more than two decades, citing persistent inflation.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy that fuels the organism's activities.",
)
