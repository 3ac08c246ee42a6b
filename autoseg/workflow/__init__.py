"""The workflow layer: the only orchestration in autoseg.

It is the one place that turns ``(workspace, dataset)`` into a loaded, checked :class:`~autoseg.workflow.context.
DatasetContext` (:func:`~autoseg.workflow.context.load_context`), and the one place that runs a fold job (train ->
validate -> next-stage inputs -> report, :mod:`autoseg.workflow.fold`), an AutoML run (:mod:`~autoseg.workflow.automl`),
model selection (:mod:`~autoseg.workflow.selection`), prediction with a dataset's models
(:mod:`~autoseg.workflow.predict`), planning (:mod:`~autoseg.workflow.plan`) and export / import
(:mod:`~autoseg.workflow.export`). It composes the layers below it, which know nothing of workspaces beyond the paths
they are given; only :mod:`autoseg.api` (and through it the CLI) imports it.

Why a package and not ``api.py`` itself: the public functions keep their plain ``(workspace, dataset, ...)``
signatures in :mod:`autoseg.api`, while the steps here take a context, so one command (``autoseg train`` without
``-c``) loads the dataset once and runs many fold jobs on it.
"""
