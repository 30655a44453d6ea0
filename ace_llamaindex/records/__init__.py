"""The records every stage passes: one floor below the stages, importing none of them (only ``errors`` and
``options``), so a low stage can name a type a higher one fills.

- :mod:`.verdict` — :class:`~.verdict.Verdict` (a comparison's word) and how a difference and its interval are written;
- :mod:`.gate` — :class:`~.gate.GateResult`, the promotion gate's comparison as a card holds it;
- :mod:`.plan` — :class:`~.plan.ServingPlan`, what serves a collection;
- :mod:`.card` — :class:`~.card.TrainingCard` (with its schema version), what a training run did;
- :mod:`.outcome` — :class:`~.outcome.Outcome`, what a run did with its output folder;
- :mod:`.evidence` — :class:`~.evidence.Evidence`, what a rollout compared the model with;
- :mod:`.experiment` — :class:`~.experiment.ExperimentRecord` and :class:`~.experiment.ExperimentStatus`, an online
  experiment and the verdict on it now.

Each record is read and written in one place: its ``from_dict``/``to_dict`` (or ``as_dict``)."""
