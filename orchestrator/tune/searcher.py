"""`--search optuna`: model-based search, one study per task, inside the one Tuner.

PerTaskSearcher hands each task's trials to that task's own OptunaSearch (TPE), so a task's sampler only ever
learns from its own trials (and metric). Tasks take turns (task 1 sample 0, task 2 sample 0, ..., task 1
sample 1, ...), as the pre-drawn random search does, and Tune asks for each suggestion just in time, so a
suggestion sees every trial ended by then. Sample 0 of a task is its baseline, exactly as in the random search;
once it ends its score goes to the study as an evaluated point (when its values lie in the space). A trial
ASHA stopped is told to Optuna as pruned (its intermediate values were reported), not as a complete trial with
a low score. Tune saves this searcher (pickle, Tune's own experiment state) with its experiment: --resume
continues the same studies.
"""

from __future__ import annotations

import pickle
import zlib

from ray.tune.search import Searcher

SCORE = "best_valid"  # what a study maximises: the best validation value a trial reached (keep_best)


def startup_trials(samples: int) -> int:
    """TPE's random start-up trials per task: a third of the searched samples, at least 2 (Optuna's default
    of 10 would leave a search of fewer samples random)."""
    return max(2, (samples - 1) // 3)


class PerTaskSearcher(Searcher):
    def __init__(self, tasks: list[str], baselines: dict[str, dict], space: dict, samples: int, seed: int):
        super().__init__(metric=SCORE, mode="max")
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
        self.fixed = {k: d.values[0] for k, d in space.items() if d.kind == "fixed"}
        searched = OptunaSearch.convert_search_space({k: d.to_tune() for k, d in space.items() if d.kind != "fixed"})
        self.tasks, self.baselines, self.samples = list(tasks), baselines, samples
        self.studies = {
            t: OptunaSearch(space=searched, metric=SCORE, mode="max",
                            sampler=optuna.samplers.TPESampler(seed=zlib.crc32(f"{seed}:{t}".encode()),
                                                               n_startup_trials=startup_trials(samples),
                                                               multivariate=True))
            for t in tasks}
        self.next_sample = {t: 0 for t in tasks}
        self.turn = 0
        self.owner: dict[str, tuple[str, int]] = {}  # trial_id -> (task, sample)

    def suggest(self, trial_id: str):
        left = [t for t in self.tasks if self.next_sample[t] < self.samples]
        if not left:
            return Searcher.FINISHED
        while self.next_sample[self.tasks[self.turn % len(self.tasks)]] >= self.samples:
            self.turn += 1
        task = self.tasks[self.turn % len(self.tasks)]
        self.turn += 1
        sample = self.next_sample[task]
        self.next_sample[task] += 1
        self.owner[trial_id] = (task, sample)
        if sample == 0:
            return {"task": task, "sample": 0, **self.baselines[task]}
        params = self.studies[task].suggest(trial_id)
        rounded = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}
        return {"task": task, "sample": sample, **self.fixed, **rounded}  # floats as the random search draws them

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        task, sample = self.owner.get(trial_id, (None, 0))
        if sample and not result.get("final"):
            self.studies[task].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        task, sample = self.owner[trial_id]
        study = self.studies[task]
        if sample == 0:
            if result and result.get("final") and result.get(SCORE) is not None and not error:
                point = {k: v for k, v in self.baselines[task].items() if k not in self.fixed}
                try:  # only a baseline whose values lie in the space can teach the study
                    study.add_evaluated_point(point, result[SCORE])
                except (ValueError, KeyError, TypeError):
                    pass
            return
        # Ended by ASHA (no final report): pruned with its intermediate values, not complete at a low score.
        study.on_trial_complete(trial_id, result if result and result.get("final") else None, error)

    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
