"""One evaluation report format for every task: headline metrics, a per-group breakdown, the paper's numbers.

JSON keys (`Report.to_json`):
    task      task name
    split     evaluated split
    examples  number of evaluated examples
    metrics   {name: value} headline metrics in [0, 1] (e.g. accuracy, relational, non_relational)
    groups    {group: {"accuracy": value, "count": n}} the paper's breakdown (question subtype, CLEVR category,
              bAbI task, ...)
    paper     {name: value} the paper's result for the same metric or group names, where it reports one
    extra     task-specific additions (e.g. the number of bAbI tasks passed)
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class Report:
    task: str
    split: str
    examples: int
    metrics: dict
    groups: dict = dataclasses.field(default_factory=dict)
    paper: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data):
        return cls(**data)

    def table(self):
        """A plain-text table: one row per group, then the headline metrics, each beside the paper's value."""
        has_paper = bool(self.paper)
        header = f"{'':<24}{'accuracy':>10}{'count':>9}" + (f"{'paper':>9}" if has_paper else "")
        lines = [f"{self.task} / {self.split}: {self.examples} examples", header, "-" * len(header)]

        def paper(name):
            if not has_paper:
                return ""
            value = self.paper.get(name)
            return f"{100 * value:>8.1f}%" if value is not None else f"{'':>9}"

        for name, group in self.groups.items():
            lines.append(f"{name:<24}{100 * group['accuracy']:>9.2f}%{group['count']:>9}{paper(name)}")
        if self.groups:
            lines.append("-" * len(header))
        for name, value in self.metrics.items():
            lines.append(f"{name:<24}{100 * value:>9.2f}%{'':>9}{paper(name)}")
        for name, value in self.extra.items():
            if isinstance(value, float):
                lines.append(f"{name:<24}{value:>10.4g}")
            elif not isinstance(value, (dict, list)):
                lines.append(f"{name:<24}{value!s:>10}")
        return "\n".join(lines)


def grouped_accuracy(correct, group_ids, group_names):
    """{name: {"accuracy", "count"}} for each group that has examples; `correct` and `group_ids` are 1-D arrays."""
    correct = np.asarray(correct, np.float64)
    group_ids = np.asarray(group_ids)
    groups = {}
    for index, name in enumerate(group_names):
        selected = group_ids == index
        if selected.any():
            groups[name] = {"accuracy": float(correct[selected].mean()), "count": int(selected.sum())}
    return groups


def mean_of_groups(groups, names):
    """Accuracy over the examples of the named groups (weighted by count); None if none of them occurred."""
    present = [groups[n] for n in names if n in groups]
    total = sum(g["count"] for g in present)
    if not total:
        return None
    return sum(g["accuracy"] * g["count"] for g in present) / total
