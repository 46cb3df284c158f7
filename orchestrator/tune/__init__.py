"""Ray Tune searches over the tasks of a spec (`python cli.py tune`).

search.py plans and runs a search (one Tuner for every task), trial.py is the checkpointed trainable,
schedulers.py keeps one ASHA / PBT / PB2 per task, searcher.py one Optuna study per task, space.py the search
space, results.py owns what a search writes (trials.parquet, best.json, the tuned spec) and how it is read
back, export.py bundles the best checkpoints (--export), monitor.py follows a running search. Design:
docs/TUNE.md.
"""

from orchestrator.tune.search import SearchOutcome, SearchPlan, TuneSearch, plan_for, plan_search

__all__ = ["SearchOutcome", "SearchPlan", "TuneSearch", "plan_for", "plan_search"]
