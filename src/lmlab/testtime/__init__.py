"""Test-time compute: sample N answers, choose one well, and count what it cost.

`generators` draws the samples (lmlab's engine, or any OpenAI-compatible server), `tasks` says what a
prompt is and how an answer is read and graded, `select` holds the choosing rules (best-of-N by
log-probability, reward model or any scorer; majority vote), `verifier` trains an outcome reward model
on the model's own graded samples, and `run` measures accuracy against N and cost (`lmlab testtime`).
"""
