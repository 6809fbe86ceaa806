"""Models: the registered models with their cards, and importing a model from a ``.keras`` file.

Each card shows its quality check (a model that failed it is marked in red with the reason and is
never selected by default), its stain normalisation, calibration (with the reliability diagram of
its held-out tiles), out-of-domain flag, test-time augmentation, uncertainty and field of view.

Uploaded models are untrusted: the engine (``engine.registry.import_model``) inspects the archive's
config before loading anything, refuses Lambda layers, custom or unknown objects, legacy HDF5,
pickles and SavedModels, loads in Keras safe mode, checks the input size and outputs against the
card, and writes the model folder only when everything passed. A refused file leaves the registry
as it was. An imported model is selectable in the sidebar at once.
"""

import pandas as pd
import streamlit as st

from dashboard.common import disclaimer, show_error
from engine.calibration import reliability_figure
from engine.normalization import describe as describe_normalization
from engine.privacy import strip_server_paths
from engine.registry import Registry

FLASH_KEY = "models_import_done"
METRIC_COLUMNS = ("split", "n", "auc", "accuracy_multiclass", "balanced_accuracy", "accuracy", "f1", "ece", "ece_uncalibrated", "in_domain_fraction")

st.title("Models")
registry = Registry()

done = st.session_state.pop(FLASH_KEY, None)
if done:
    st.success(f"Imported model **{done}**: it is now in the sidebar's model list.")


def card_details(card) -> None:
    st.markdown(
        f"**{card.name or card.id}** (version {card.version})  \n"
        f"Score: {card.score_name} = p({' + '.join(card.positive_classes) or card.classes[-1]}) · threshold {card.threshold:.3f} ({card.threshold_method or 'not stated'})  \n"
        f"Stain normalisation: **{describe_normalization(card)}** (applied by default on every page)  \n"
        f"Field of view: {f'{card.mpp:g} µm per input pixel' if card.mpp else 'µm/px unknown'}" + (f" — {card.mpp_method}" if card.mpp_method else "")
    )
    if card.calibration:
        st.caption(f"Calibration: {card.calibration.get('method')} (T = {card.temperature:.3f}, fitted on {card.calibration.get('fitted_on', '?')}).")
    if card.domain:
        st.caption(f"Out-of-domain flag: {card.domain.get('method')}, threshold {card.domain.get('threshold')} — {card.domain.get('fitted_on', '')}.")
    ensemble = card.extra.get("ensemble") or {}
    if ensemble.get("members"):
        st.caption(f"Ensemble: {ensemble['members']} networks — {ensemble.get('what', '')}.")
    if card.tta_views > 1:
        st.caption(f"Test-time augmentation: {card.tta_views} views — {card.tta.get('what', '')}.")
    if card.uncertainty:
        st.caption(f"Uncertainty: {card.uncertainty.get('method')} ({card.uncertainty.get('samples')} samples): {card.uncertainty.get('what', '')}.")
    if card.metrics:
        st.dataframe(pd.DataFrame([{k: m.get(k) for k in METRIC_COLUMNS} for m in card.metrics]), hide_index=True, width="stretch")
    tables = (card.calibration or {}).get("reliability") or {}
    if tables:
        split = "test" if "test" in tables else next(iter(tables))
        st.plotly_chart(reliability_figure(tables[split], title=f"Reliability on {split} tiles (top label, 10 bins)"), width="stretch",
                        key=f"reliability-{card.id}")
    elif card.metrics:
        st.caption("No reliability diagram: this card has no calibration data.")
    if card.intended_use:
        st.caption(f"Intended use: {card.intended_use}")
    if card.limitations:
        st.caption(f"Limitations: {card.limitations}")
    st.json(strip_server_paths(card.to_dict()), expanded=False)


cards = registry.cards()
st.subheader(f"{len(cards)} registered model(s)")
if not cards:
    st.info("No model is registered yet: train one on the Training page or import one below.")
for card in cards:
    m = card.headline_metrics()
    metric = " · ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
    status = " · :red[**FAILED QUALITY CHECK**]" if card.quality_failed else ""
    with st.expander(f"**{card.id}** — {card.architecture}, {card.input_px} px, classes {', '.join(card.classes)}" + (f" · {metric}" if metric else "") + status):
        if card.quality_failed:
            st.error(f"This model failed the training quality check: {card.quality_reason}. It is never selected by default.", icon=":material/error:")
        card_details(card)
for folder, problem in registry.problems().items():
    st.warning(f"Model folder '{folder}' is not usable: {problem}")

st.subheader("Import a model")
st.caption(
    "A Keras 3 `.keras` file built from built-in Keras layers only, taking RGB tiles with values 0–255 "
    "(its own rescaling inside). Lambda layers, custom layers, legacy `.h5`, pickles and SavedModels are refused: "
    "they can run code on the server."
)
with st.form("import_model_form", clear_on_submit=False):
    upload = st.file_uploader("Model file (.keras)", key="import_model_file")
    c1, c2 = st.columns(2)
    model_id = c1.text_input("Model id", placeholder="e.g. lung-resnet-v2", help="Letters, digits, '.', '_', '-'.")
    name = c2.text_input("Name (optional)")
    c1, c2 = st.columns(2)
    classes = c1.text_input("Classes, in output order", placeholder="benign, tumour", help="Comma-separated, in the order of the model's outputs.")
    positive = c2.text_input("Positive classes (score)", placeholder="tumour", help="Their summed probability is the score. Default: the last class.")
    c1, c2, c3, c4 = st.columns(4)
    input_px = c1.number_input("Input px", 8, 4096, 224, step=8)
    threshold = c2.number_input("Threshold", 0.0, 1.0, 0.5, 0.01)
    mpp_known = c3.toggle("Microns per pixel known", value=False)
    mpp = c4.number_input("Microns per pixel", 0.01, 100.0, 0.5, 0.01, format="%.3f")
    submitted = st.form_submit_button("Import", type="primary")

if submitted:
    if upload is None:
        st.error("Choose a .keras file to import.")
    else:
        fields = {"id": model_id.strip(), "name": name.strip(), "classes": classes, "positive_classes": positive,
                  "input_px": int(input_px), "threshold": float(threshold), "mpp": float(mpp) if mpp_known else None}
        try:
            from engine.registry import import_model

            with st.spinner("Checking the model…"):
                card = import_model(upload.getvalue(), fields, registry.root, file_name=upload.name)
        except Exception as err:  # noqa: BLE001 - every refusal is a message; the registry is unchanged
            show_error(err, context=f"Import of '{upload.name}'")
        else:
            st.session_state[FLASH_KEY] = card.id
            st.rerun()  # the sidebar (drawn before this page) lists the new model on the rerun
disclaimer()
