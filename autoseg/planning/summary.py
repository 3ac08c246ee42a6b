"""Human-readable summary of plans (printed by ``autoseg plan``)."""

from __future__ import annotations

from autoseg.schema.plans import Plans


def _fmt(values, digits: int | None = None) -> str:
    if digits is None:
        return "x".join(str(int(v)) for v in values)
    return "x".join(f"{v:.{digits}g}" for v in values)


def plans_table(plans: Plans) -> str:
    """A table with one row per configuration: spacing, median shape, patch, batch, stages, poolings, memory."""
    budgeted = [c for c in plans.configurations.values() if c.budget is not None]
    header = ("configuration", "spacing (mm)", "median shape", "patch", "batch", "stages", "poolings", "memory (GB)")
    if budgeted:
        header += ("width", "s/iteration", "iterations/fold")
    rows = [header]
    for name, c in plans.configurations.items():
        row = (name + (f" <- {c.previous_stage}" if c.previous_stage else ""), _fmt(c.spacing, 4),
               _fmt([round(m) for m in c.median_shape]), _fmt(c.patch_size), str(c.batch_size),
               str(c.architecture.n_stages), _fmt(c.architecture.poolings_per_axis), f"{c.estimated_memory_gb:.1f}")
        if budgeted:
            b = c.budget
            row += (str(c.architecture.features_per_stage[0]),) + (
                (f"{b.seconds_per_iteration:.3g}", f"~{b.iterations}" + ("" if b.enough else " (short)"))
                if b is not None else ("-", "-"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    norm = ", ".join(f"{ch}: {n.scheme}{' (nonzero mask)' if n.use_nonzero_mask else ''}"
                     for ch, n in zip(plans.channel_names, next(iter(plans.configurations.values())).normalization))
    lines.append("")
    lines.append(f"dataset {plans.dataset_name}; preset {plans.preset}, {plans.memory_target_gb:g} GB target; "
                 f"axis order after transpose {plans.transpose_forward}; normalisation {norm}")
    if plans.regions:
        lines.append("region-based: one sigmoid output per region, written as label values "
                     + ", ".join(f"{r.name} ({'+'.join(map(str, r.labels))}) -> {v}"
                                 for r, v in zip(plans.regions, plans.regions_class_order)))
    if set(plans.configurations) == {"2d"} and round(plans.original_median_shape[0]) == 1:
        lines.append("2D images (one slice per case): the 2d configuration only, 3D configurations need volumes")
    if budgeted:
        b = budgeted[0].budget
        lines.append(f"fitted to {b.minutes:g} training minutes per fold on {b.device} (measured "
                     f"{b.seconds_per_tmac:.3g} s per 10^12 multiply-accumulates), aiming at {b.min_iterations} "
                     f"iterations:")
        for name, c in plans.configurations.items():
            if c.budget is not None:
                offs = "; ".join(c.budget.trade_offs) or "nnU-Net's plan unchanged"
                lines.append(f"  {name}: {offs}" + ("" if c.budget.enough else
                             f" (still short of {c.budget.min_iterations} iterations: the cheapest plan the rule "
                             f"has; a longer budget trains better)"))
    return "\n".join(lines)
