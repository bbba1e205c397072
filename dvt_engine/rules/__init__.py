"""The run rules (contract §3), each family in one small module, each rule in one place.

The RunInterpreter asks these modules; engines ask the interpreter or these modules and
translate the answer into their own calls. An adapter never decides a rule by itself, so a rule
changed here changes on every engine at once.

- :mod:`~dvt_engine.rules.scheduling`: which steps start now, and when a run is complete.
- :mod:`~dvt_engine.rules.failure`: failFast and awaitOperator, and what a failing run owes.
- :mod:`~dvt_engine.rules.gates`: approval gates' timeouts and timer names.
- :mod:`~dvt_engine.rules.retries`: engine retries of one logical attempt (backoff, finality).
- :mod:`~dvt_engine.rules.settlement`: what an attempt's outcome means for the run.
- :mod:`~dvt_engine.rules.pause`: what a pause stops, and what runs again on resume.
- :mod:`~dvt_engine.rules.cancel`: cooperative cancel and its default reason.
- :mod:`~dvt_engine.rules.concurrency`: plan v1.3 maxParallel and concurrency group limits.
- :mod:`~dvt_engine.rules.joins`: plan v1.3 any/quorum joins, their losers, skipRule cascade.
- :mod:`~dvt_engine.rules.signals`: plan v1.3 custom signals: the step a signal completes.
- :mod:`~dvt_engine.rules.conditions`: plan v1.3 ``when`` conditions (CEL), checked and evaluated.
"""
