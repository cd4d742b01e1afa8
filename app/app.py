"""MoNE Explorer: see which image patches a Mixture-of-Nested-Experts ViT spends its compute on.

    python app/app.py            # http://127.0.0.1:7860, no network needed

Builds `demo` (gr.Blocks) and wires the events; everything it computes lives in `app/inference.py`.
Public API endpoints: /analyze_image and /analyze_video (README, "API": a gradio_client example).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):                      # `python app/app.py`: make `mone` and `app` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import logging  # noqa: E402

import gradio as gr  # noqa: E402

import mone  # noqa: E402
from app import inference as inf  # noqa: E402

log = logging.getLogger("mone.app")
MAX_FILE_SIZE = "64mb"
CSS = """
#budget-macs { align-self: center; min-width: 12em; }
#budget-macs p { font-size: 1.05em; }
"""

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_EXTENSIONS = {".mp4", ".webm", ".mov", ".avi", ".mkv"}


def _examples(kind: set[str]) -> list[str]:
    folder = inf.REPO / "assets" / "examples"
    return sorted(str(p) for p in folder.glob("*") if p.suffix.lower() in kind) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------------ event functions
def on_analyze(image, model, allocator, budget, opacity, view):
    """/analyze_image: (image, model, allocator, budget e_c, opacity, view) -> (overlay PNG, top-5, readout Markdown,
    accuracy-vs-MACs plot, MACs beside the slider, details JSON). Runs just the requested budget; the latency
    readout is measured in the background when the app is idle (null until then)."""
    return inf.analyze_image(image, model, allocator, budget, opacity, view, measure=False).outputs()


def on_upload(image, model, allocator, budget, opacity, view):
    """A new image, model or allocator in the UI: the whole budget grid in one batched pass, for the slider."""
    log.debug("upload event: %s", (inf.path_of(image), model, allocator, budget))
    return inf.analyze_image(image, model, allocator, budget, opacity, view, precompute=True).outputs()


def on_slide(image, model, allocator, budget, opacity, view):
    """Slider moves: only render (the timing forward, if still missing, waits until the slider rests)."""
    return inf.analyze_image(image, model, allocator, budget, opacity, view, measure=False,
                             precompute=True).outputs()


def on_select(image, model, allocator, budget, evt: gr.SelectData):
    if image is None:
        return None, "Upload an image first."
    x, y = (evt.index if isinstance(evt.index, (list, tuple)) else (None, None))[:2]
    return inf.patch_info(image, model, allocator, budget, x, y)


def on_compare(image, model, budget, opacity):
    return inf.compare_allocators(image, model, budget, opacity)


@inf.gpu
def on_video(video, model, allocator, budget, opacity, max_frames, progress=gr.Progress()):
    """/analyze_video: (video, model, allocator, budget e_c, opacity, frame cap) -> (H.264 MP4 with the overlay,
    per-frame plot, note Markdown, details JSON). A generator, so that a cancelled job stops between batches."""
    if inf.path_of(video) is None:
        yield None, None, "Upload a video or pick the example.", {}
        return
    progress(0, desc="decoding")
    done = 0
    try:
        for kind, value in inf.iter_analyze_video(video, model, allocator, budget, opacity, max_frames):
            if kind == "progress":
                done, total, text = value
                progress((done, total), desc=text)
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            else:
                log.info("video job done: %s frames", value.details["frames"])
                yield value.outputs()
    except GeneratorExit:                          # cancelled (a new upload): stop between batches
        log.info("video job cancelled after %s frames", done)
        raise


def on_model_info(model):
    if not inf.registry():
        return f"**No checkpoints found** in `{inf.assets_dir()}`: train one with `python -m mone.train ...`."
    entry = inf.get_entry(model)
    card, pre = entry.card, entry.card["preprocess"]
    data = card.get("data", {}).get("dataset") if isinstance(card.get("data"), dict) else None
    trained_on = f" · trained on **{data}**" if data else ""
    if data == "scenes":        # which test backgrounds are unseen depends on the version (mone.data.scenes)
        trained_on += f" (data version {mone.scenes_version(card)})"
    classes = ", ".join(entry.classes[:12]) + (" ..." if len(entry.classes) > 12 else "")
    curve = "curve file found" if inf.load_curve(entry) else "no curve file"
    return (f"`{card['model']}` · {pre['image_size']} px, {pre.get('in_chans', 3)} channel(s){trained_on}"
            f" · classes: {classes} · {curve}")


# ----------------------------------------------------------------------------------------------------- the page
def build_demo() -> gr.Blocks:
    names, default = inf.model_names(), inf.default_model()
    allocators = list(mone.ALLOCATORS)
    with gr.Blocks(title="MoNE Explorer", delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# MoNE Explorer\nMixture of Nested Experts (Jain et al., NeurIPS 2024): a router sends each "
                    "image patch to one of four nested widths of the same ViT (D/8 … D). Move the budget and watch "
                    "which patches keep the full width.")
        with gr.Row():
            model_dd = gr.Dropdown(names, value=default, label="Model (checkpoint card in assets/)", scale=1,
                                   allow_custom_value=True, elem_id="model")
            model_md = gr.Markdown(on_model_info(default) if default else on_model_info(None), elem_id="model-info")
        with gr.Tab("Image", elem_id="tab-image"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    img_in = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                      label="Image (upload or pick an example)", height=280, elem_id="image-in")
                    gr.Examples(_examples(IMAGE_EXTENSIONS), inputs=[img_in], label="Examples (Scenes test images "
                                "and CC0 photos)", examples_per_page=16, elem_id="image-examples")
                    alloc_dd = gr.Dropdown(allocators, value="epr", label="Allocator / router",
                                           allow_custom_value=True, elem_id="allocator")
                    with gr.Row(equal_height=True):
                        budget = gr.Slider(inf.BUDGET_MIN, inf.BUDGET_MAX, value=0.5, step=inf.BUDGET_STEP,
                                           label="Budget e_c (share of the dense compute)", scale=3,
                                           elem_id="budget")
                        budget_md = gr.Markdown("", label="Budget MACs", elem_id="budget-macs")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
                    view = gr.Radio(list(inf.VIEWS), value=inf.VIEW_EXPERTS, label="View", elem_id="view")
                with gr.Column(scale=3, min_width=400):
                    overlay = gr.Image(format="png", type="filepath", label="Patch routing (click a patch)",
                                       interactive=False, elem_id="overlay", buttons=["download", "fullscreen"])
                    with gr.Row():
                        top5 = gr.Label(num_top_classes=5, label="Top-5 prediction", elem_id="top5")
                        patch_lbl = gr.Label(label="Router probabilities of the clicked patch", elem_id="patch")
                    patch_md = gr.Markdown("Click a patch of the overlay to see its router probabilities.",
                                           elem_id="patch-info")
                    readout = gr.Markdown(label="Readout", elem_id="readout")
            curve = gr.Plot(label="Accuracy vs MACs (current budget = the ringed point)", elem_id="curve")
            with gr.Accordion("Compare every allocator at this budget", open=False):
                compare_btn = gr.Button("Compare allocators", elem_id="compare")
                gallery = gr.Gallery(label="Same image, same budget, every allocator", columns=4, height="auto",
                                     format="png", elem_id="gallery")
            with gr.Accordion("Details (JSON)", open=False):
                details = gr.JSON(label="Details", elem_id="details")

        with gr.Tab("Video", elem_id="tab-video"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    vid_in = gr.Video(sources=["upload"], label="Video (upload or pick the example)", height=260,
                                      elem_id="video-in")
                    vid_examples = gr.Examples(_examples(VIDEO_EXTENSIONS), inputs=[vid_in], label="Example",
                                               elem_id="video-examples")
                    v_alloc = gr.Dropdown(allocators, value="epr", label="Allocator / router", allow_custom_value=True)
                    v_budget = gr.Slider(inf.BUDGET_MIN, inf.BUDGET_MAX, value=0.5, step=inf.BUDGET_STEP,
                                         label="Budget e_c", elem_id="v-budget")
                    v_opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                    v_frames = gr.Slider(8, inf.MAX_VIDEO_FRAMES, value=48, step=8, label="Frame cap (sampled evenly)")
                    run_btn = gr.Button("Analyze video", variant="primary", elem_id="run-video")
                with gr.Column(scale=3, min_width=400):
                    vid_out = gr.Video(label="Overlay video (H.264)", interactive=False, elem_id="video-out")
                    v_note = gr.Markdown(label="Note", elem_id="video-note")
            v_plot = gr.Plot(label="Prediction and tokens per expert over time", elem_id="video-plot")
            with gr.Accordion("Details (JSON)", open=False):
                v_details = gr.JSON(label="Video details", elem_id="video-details")

        # --- wiring: every model run shares one concurrency slot ("model", limit 1) -----------------------------
        image_inputs = [img_in, model_dd, alloc_dd, budget, opacity, view]
        image_outputs = [overlay, top5, readout, curve, budget_md, details]
        common = dict(inputs=image_inputs, outputs=image_outputs, preprocess=False, concurrency_id="model",
                      concurrency_limit=1, trigger_mode="always_last")
        gr.on([img_in.change, model_dd.change, alloc_dd.change, view.change], on_upload, api_visibility="private",
              show_progress="minimal", **common)
        # The public endpoint: the same inputs and outputs, but only the requested budget is computed (an API
        # client sends one budget per upload; the UI's upload event above precomputes the grid for the slider).
        api_btn = gr.Button(visible=False, elem_id="api-analyze-image")
        api_btn.click(on_analyze, api_name="analyze_image", **common)
        gr.on([budget.release, budget.input, opacity.release, opacity.input], on_slide, api_visibility="private",
              show_progress="hidden", **common)
        model_dd.change(on_model_info, model_dd, model_md, api_visibility="private", queue=False)
        overlay.select(on_select, [img_in, model_dd, alloc_dd, budget], [patch_lbl, patch_md], preprocess=False,
                       api_visibility="private", show_progress="hidden", concurrency_id="model", concurrency_limit=1)
        compare_btn.click(on_compare, [img_in, model_dd, budget, opacity], gallery, preprocess=False,
                          api_visibility="private", concurrency_id="model", concurrency_limit=1)

        video_ev = gr.on([run_btn.click, vid_in.change], on_video,
                         [vid_in, model_dd, v_alloc, v_budget, v_opacity, v_frames],
                         [vid_out, v_plot, v_note, v_details], api_name="analyze_video", preprocess=False,
                         concurrency_id="model", concurrency_limit=1, trigger_mode="multiple")
        # A new upload (or removing the video to upload another, or picking the example) cancels a running video
        # job: these events are dispatched before the component's `change`, which then starts the new job at once
        # ("multiple": not deferred behind the cancelled one). The job stops at its next batch (a generator).
        gr.on([vid_in.upload, vid_in.clear, vid_examples.dataset.click], None, None, None, cancels=[video_ev])
    return demo


demo = build_demo()


def launch(app: gr.Blocks | None = None, **kwargs):
    """Launch `app` (default: `demo`) on 127.0.0.1:7860, or $GRADIO_SERVER_NAME / $GRADIO_SERVER_PORT as on Hugging
    Face Spaces; uploads are bounded by MAX_FILE_SIZE. Keyword arguments override (tests: prevent_thread_lock)."""
    options = dict(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)), max_file_size=MAX_FILE_SIZE,
                   css=CSS, show_error=True)
    options.update(kwargs)
    return (app or demo).queue(default_concurrency_limit=4).launch(**options)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(os.environ.get("MONE_LOG_LEVEL", "INFO"))
    launch()
