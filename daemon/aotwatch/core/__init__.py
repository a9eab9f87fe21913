"""The model, with neither torch nor Ray: records and messages (their schemas), the metric
table and what folds records into it, archives, config, and the cross-rank comparison, cost
and judging the head does. Every other layer builds on this one."""
