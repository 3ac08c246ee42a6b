"""One handler per command: argparse's namespace -> one ``autoseg.api`` call, its result printed. No logic lives
here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from autoseg.cli.options import EXIT_SOME_FAILED, TRAINING_OPTIONS, default_workspace
from autoseg.errors import AutosegError


def _cmd_verify(args) -> int:
    from autoseg import api

    spec = api.verify(args.raw_dir, num_workers=args.workers)
    unlabelled = f"{len(spec.unlabelled_cases)} unlabelled training, " if spec.unlabelled_cases else ""
    print(f"{args.raw_dir}: OK, dataset '{spec.name}' ({len(spec.training)} training, {unlabelled}"
          f"{len(spec.test)} test cases, {spec.num_channels} channel(s), {spec.num_classes - 1} foreground label(s))")
    print(f"next: autoseg plan {args.raw_dir}")
    return 0


def _cmd_plan(args) -> int:
    from autoseg import api
    from autoseg.planning.summary import plans_table

    budget = {} if args.min_iterations is None else {"min_iterations": args.min_iterations}
    result = api.plan(args.raw_dir, args.workspace, preset=args.preset, memory_gb=args.gpu_memory,
                      num_workers=args.workers, preprocess=not args.no_preprocess, budget_minutes=args.budget,
                      device=args.device, **budget)
    if result.fingerprint_reused:
        print(f"dataset unchanged since the last run: reused {result.paths.fingerprint}")
    if result.dataset_report is not None:
        from autoseg.fingerprint.report import format_report

        print(format_report(result.dataset_report) + f"\n(also in {result.paths.dataset_report})\n")
    print(plans_table(result.plans))
    if result.run_plan is not None:
        from autoseg.planning.run_plan import run_plan_table

        print("\n" + run_plan_table(result.run_plan) + f"\n(also in {result.paths.run_plan})")
    if args.budget is None:
        advice = api.cpu_budget_advice(result.plans, args.workspace, args.device, **budget)
        if advice:
            print("\n" + advice)
    print(f"\nwrote {result.paths.plans}")
    if result.unlabelled:
        print(f"{result.unlabelled} unlabelled training image(s) in imagesTrUnlabelled/: verified and preprocessed, "
              f"outside the fingerprint and the folds; train learns from them too (--semi-supervised off: not)")
    if result.preprocessing is not None:
        from autoseg.preprocessing.run import preprocess_summary

        print("preprocessed:\n" + preprocess_summary(result.preprocessing))
    name = result.plans.dataset_name
    ws = "" if args.workspace == Path(default_workspace()) else f" -w {args.workspace}"
    print(f"\ndataset name: {name}; next: autoseg train {name}{ws}"
          + (" (it follows the run plan)" if result.run_plan is not None else ""))
    return 0


def _cmd_preprocess(args) -> int:
    from autoseg import api
    from autoseg.preprocessing.run import preprocess_summary

    result = api.preprocess(args.workspace, args.dataset, configs=args.config, num_workers=args.workers)
    print("preprocessed:\n" + preprocess_summary(result))
    return 0


def _cmd_evaluate(args) -> int:
    from autoseg import api
    from autoseg.evaluation.folder import parse_regions, summary_table

    summary = api.evaluate(args.pred_dir, args.gt_dir, workspace=args.workspace, dataset=args.dataset,
                           num_workers=args.workers, labels=args.labels, output=args.output,
                           nsd_tolerance_mm=args.nsd_tolerance, predicted_only=args.predicted_only,
                           roi_dir=args.roi, regions=parse_regions(args.regions) if args.regions else None)
    print(summary_table(summary))
    print(f"\nwrote {args.output or args.pred_dir / 'summary.json'}")
    return 0


def _cmd_train(args) -> int:
    from autoseg import api

    overrides = dict(epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                     validation_iterations=args.validation_iterations, batch_size=args.batch_size,
                     validation_mirroring=None if args.validation_mirroring else False,
                     learning_rate=args.learning_rate, warmup_fraction=args.warmup, schedule=args.schedule,
                     seed=args.seed,
                     deterministic=args.deterministic,
                     precision=args.precision, num_workers=args.workers, checkpoint_every=args.checkpoint_every,
                     pretrained=args.pretrained, pretrained_fold=args.pretrained_fold,
                     freeze_encoder_epochs=args.freeze_encoder_epochs, early_stop_patience=args.early_stop,
                     trackers=tuple(args.log) if args.log else None, semi_supervised=args.semi_supervised,
                     unlabelled_batch_size=args.unlabelled_batch_size,
                     pseudo_label_threshold=args.pseudo_label_threshold, teacher_ema=args.teacher_ema,
                     unlabelled_weight=args.unlabelled_weight, unlabelled_rampup=args.unlabelled_rampup)
    single = args.config is not None and len(args.config) == 1 and args.fold is not None and len(args.fold) == 1
    if args.job_timeout is not None and args.cluster is None:
        raise AutosegError("--job-timeout applies to the jobs of a --cluster run")
    if args.cluster is not None:
        if args.overwrite:
            raise AutosegError("--overwrite applies to one fold in this process, not to a cluster run")
        best = api.train_on_cluster(args.workspace, args.dataset, args.cluster, args.config, args.fold,
                                    budget_minutes=args.budget, train_flags=_forwarded_training_flags(args),
                                    device=args.device, precision=args.precision,
                                    job_timeout_minutes=args.job_timeout)
        if best is not None:
            from autoseg.evaluation.selection import selection_table

            print(selection_table(best))
        return 0
    if not single:
        if args.overwrite:
            raise AutosegError("--overwrite applies to one fold: give one -c and one -f")
        _, best = api.train_all(args.workspace, args.dataset, args.config, args.fold, budget_minutes=args.budget,
                                device=args.device, validate=not args.no_validation, allocation=args.allocation,
                                **overrides)
        if best is not None:
            from autoseg.evaluation.selection import selection_table

            print(selection_table(best))
        return 0
    distributed = _torchrun_spec()
    result = api.train(args.workspace, args.dataset, args.config[0], args.fold[0], device=args.device,
                       resume=args.resume, overwrite=args.overwrite, validate=not args.no_validation,
                       distributed=distributed, budget_minutes=args.budget, **overrides)
    if distributed is not None and not distributed.is_main:
        return 0
    st = result.state
    if result.already_finished:
        print(f"{result.folder}: already trained ({st.epoch} epochs); pass a larger --epochs to extend it")
    print(f"{args.config[0]} fold {args.fold[0]}: {st.epoch} epochs x {st.iterations_per_epoch} iterations, "
          f"best smoothed pseudo-Dice {st.best_ema_pseudo_dice:.3f}")
    if st.stop_reason:
        print(st.stop_reason)
    if result.validation_dice:
        print("validation Dice: " + ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a"
                                              for k, v in result.validation_dice.items()))
    print(f"model folder: {result.folder}")
    return 0


def _forwarded_training_flags(args) -> list[str]:
    """The training options given on this command line, spelled for ``autoseg train`` (every fold job gets them)."""
    return [word for option in TRAINING_OPTIONS if option.forwarded
            for word in option.spelled(getattr(args, option.dest, None))]


def _cmd_jobs(args) -> int:
    from autoseg import api

    print(api.job_script(args.workspace, args.dataset, args.format, args.config, args.fold,
                         budget_minutes=args.budget, train_flags=_forwarded_training_flags(args),
                         sbatch_options=args.sbatch, device=args.device, precision=args.precision), end="")
    return 0


def _torchrun_spec():
    """Rank information when started by torchrun (the only place its environment variables are read)."""
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    from autoseg.training.distributed import DistributedSpec

    return DistributedSpec(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                           local_rank=int(os.environ["LOCAL_RANK"]), master_addr=os.environ["MASTER_ADDR"],
                           master_port=int(os.environ["MASTER_PORT"]),
                           local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _cmd_predict(args) -> int:
    from autoseg import api

    config = args.config[0] if args.config and len(args.config) == 1 else args.config
    api.check_predict(args.workspace, args.dataset, args.input, config, args.fold,
                      args.output_format)  # before any message
    print(api.describe_configuration(args.workspace, args.dataset, config))
    r = api.predict(args.workspace, args.dataset, args.input, args.output, config, args.fold,
                    args.save_probabilities, args.step, not args.no_tta, args.overwrite, args.continue_,
                    args.device, args.precision, skip_bad=args.skip_bad, roi_dir=args.roi, runtime=args.runtime,
                    output_format=args.output_format)
    print(f"wrote {len(r.written)} segmentation(s) to {r.output_dir}"
          + (f"; skipped {len(r.skipped)} already present" if r.skipped else ""))
    if r.failed:
        for problems in r.failed.values():
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
        print(f"error: {len(r.failed)} input case(s) refused, the others predicted (listed in {r.failures_file})",
              file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _cmd_export(args) -> int:
    from autoseg import api

    m = api.export_model(args.workspace, args.dataset, args.output, args.config, args.checkpoint, args.overwrite,
                         args.fmt)
    folds = "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in m.folds.items())
    print(f"wrote {args.output} ({m.dataset}: {folds}; {args.output.stat().st_size / 1e6:.1f} MB)")
    return 0


def _cmd_import(args) -> int:
    from autoseg import api

    r = api.import_model(args.zip, args.workspace, args.overwrite)
    folds = "; ".join(f"{c} fold(s) {', '.join(f)}" for c, f in r.manifest.folds.items())
    print(f"imported {r.manifest.dataset} ({folds}) into {r.root}: {len(r.written)} file(s) written"
          + (f", {len(r.unchanged)} already there" if r.unchanged else ""))
    print(f"predict with: autoseg predict {r.manifest.dataset} -w {args.workspace} -i IMAGES_DIR -o OUT_DIR")
    return 0


def _cmd_report(args) -> int:
    from autoseg import api

    print(f"wrote {api.report(args.workspace, args.dataset, args.config, args.fold)}")
    return 0


def _cmd_find_best(args) -> int:
    from autoseg import api
    from autoseg.evaluation.selection import selection_table

    best = api.find_best(args.workspace, args.dataset, args.config, num_workers=args.workers)
    _, pp = api.load_best(args.workspace, args.dataset)
    print(selection_table(best, pp))
    print(f"\nwrote {api.load_context(args.workspace, args.dataset).paths.best} and its postprocessing.json")
    return 0


def _cmd_demo(args) -> int:
    from dataclasses import replace

    from autoseg import api, synthetic

    if args.make_data is not None:
        if args.kind not in synthetic.PRESETS:
            raise AutosegError(f"--kind {args.kind}: unknown; available: {', '.join(synthetic.PRESETS)}")
        spec = replace(synthetic.PRESETS[args.kind], seed=args.seed)
        out = _make_data(args.make_data, spec)
        print(f"wrote synthetic dataset '{spec.name}' to {out}")
        return 0
    r = api.demo(args.workspace, seed=args.seed, budget_minutes=args.budget, device=args.device)
    fmt = lambda d: ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in (d or {}).items())
    print(f"\ndemo finished: model {r['model']}\n  cross-validation Dice (fold 0): {fmt(r['validation_dice'])}"
          f"\n  test-set Dice ({r['predictions']}): {fmt(r['test_dice'])}")
    return 0


def _is_dicom_convert(args) -> bool:
    """A DICOM folder given without file patterns: its series and annotations make the dataset."""
    from autoseg.io.dicom_series import is_dicom_folder

    patterns = (args.images, args.labels, args.roi, args.test_images, args.test_roi, args.map, args.label_names,
                args.channel_names)
    return not any(patterns) and is_dicom_folder(args.source)


def _cmd_convert(args) -> int:
    from autoseg import api
    from autoseg.io.convert import ConvertSpec, parse_label_map

    if args.spec is not None:
        given = [o for o, v in (("--images", args.images), ("--labels", args.labels), ("--roi", args.roi),
                                ("--test-images", args.test_images), ("--test-roi", args.test_roi),
                                ("--map", args.map), ("--label-names", args.label_names),
                                ("--channel-names", args.channel_names), ("--name", args.name)) if v]
        if given:
            raise AutosegError(f"--spec {args.spec}: give the patterns either in the file or as options, not both "
                               f"({', '.join(given)})")
        spec = ConvertSpec.from_json(args.spec)
    elif _is_dicom_convert(args):
        from autoseg.io.dicom_dataset import DicomConvertSpec

        spec = DicomConvertSpec(args.name)
    else:
        if not args.images or not args.labels:
            raise AutosegError("convert: --images and --labels are required (or --spec FILE)")
        spec = ConvertSpec(tuple(args.images), args.labels, args.roi, tuple(args.test_images), args.test_roi,
                           parse_label_map(args.map), tuple(args.label_names), tuple(args.channel_names), args.name)
    out = api.convert(args.source, args.out_dir, spec)
    print(f"wrote {out} (nnU-Net v2 raw layout); next: autoseg plan {out}")
    return 0


def _cmd_serve(args) -> int:
    from autoseg.errors import require_extra
    from autoseg.server import ServeOptions, serve
    from autoseg.workflow.serving import load_served_model, servable_datasets

    for module in ("fastapi", "uvicorn", "python_multipart"):  # before any model is loaded
        require_extra(module, "serve", "autoseg serve")
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            raise AutosegError(f"{args.token_file}: cannot read the token file ({e.strerror})") from None
        if not token:
            raise AutosegError(f"{args.token_file}: the token file is empty")
    studies = None
    if args.studies is not None:  # an unreachable PACS fails here, before any model is loaded
        from autoseg.server.dicomweb import connect

        studies = connect(args.studies)
        print(f"datastore: the DICOMweb server at {studies.url}", flush=True)
    contexts = servable_datasets(args.workspace, args.datasets)
    models = []
    for ctx in contexts:
        models.append(load_served_model(ctx, args.config, args.device, mirror=not args.no_tta, runtime=args.runtime))
        print(f"loaded {models[-1].description}", flush=True)
    print(f"serving {', '.join(m.name for m in models)} at http://{args.host}:{args.port} "
          f"(GET /info/, POST /infer/MODEL, POST /v1/segment/MODEL, GET /healthz)", flush=True)
    serve(models, args.host, args.port, ServeOptions(queue=args.queue, max_upload_mb=args.max_upload_mb,
                                                    token=token), studies=studies)
    return 0


def _make_data(out: Path, spec) -> Path:
    from autoseg import synthetic

    if out.exists() and any(out.iterdir()):
        raise AutosegError(f"{out}: folder exists and is not empty; choose another folder")
    return synthetic.make_dataset(out, spec)


#: the handler of each command
COMMANDS = {"predict": _cmd_predict, "train": _cmd_train, "verify": _cmd_verify, "plan": _cmd_plan,
             "preprocess": _cmd_preprocess, "demo": _cmd_demo, "evaluate": _cmd_evaluate,
             "find-best": _cmd_find_best, "export": _cmd_export, "import": _cmd_import, "report": _cmd_report,
             "convert": _cmd_convert, "serve": _cmd_serve, "jobs": _cmd_jobs}
