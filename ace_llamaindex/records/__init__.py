"""The records every stage passes: one floor below the stages, importing none of them (only ``errors`` and
``options``), so a low stage can name a type a higher one fills.

- :mod:`.verdict` — :class:`~.verdict.Verdict` (a comparison's word), how a difference and its interval are written,
  and :class:`~.verdict.Comparison` / :class:`~.verdict.SystemComparison`, one comparison read from a record;
- :mod:`.gate` — :class:`~.gate.GateResult`, the promotion gate's comparison as a card holds it (``GateResult.read``
  takes every shape a card holds: measured, unmeasured, none);
- :mod:`.plan` — :class:`~.plan.ServingPlan`, what serves a collection;
- :mod:`.card` — :class:`~.card.TrainingCard` (with its schema version), what a training run did, and
  :class:`~.card.ChampionRecord`, the champion it was judged against;
- :mod:`.outcome` — :class:`~.outcome.Outcome`, what a run did with its output folder;
- :mod:`.evidence` — :class:`~.evidence.Evidence`, what a rollout compared the model with;
- :mod:`.experiment` — :class:`~.experiment.ExperimentRecord` and :class:`~.experiment.ExperimentStatus`, an online
  experiment and the verdict on it now.

Each record is read and written in one place: its ``from_dict``/``to_dict`` (or ``as_dict``), and its typed
reader (``read``); the stages read a gate, a champion or a comparison through these, never by key."""
