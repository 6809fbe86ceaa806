"""Slide heatmap page: 'Anonymise names' downloads carry a stable pseudonym, never the slide's name or a server path."""


from tests.conftest import make_pyramid
from tests.dashboard.views.test_slides import library, open_library_slide, page, wait_for_job  # noqa: F401, F811 - fixture

PATIENT = "DOE_Jane_1961_S99-0001"


def test_anonymised_heatmap_downloads(library, media_downloads):  # noqa: F811 - the imported fixture
    make_pyramid(library / f"{PATIENT}.tif", width=2048, height=1536, levels=2)
    at = open_library_slide(page(), f"{PATIENT}.tif")
    at.selectbox(key="hm_level").set_value(1).run()
    at.number_input(key="hm_tile_px").set_value(128).run()
    next(b for b in at.button if b.label == "Compute heatmap").click().run()
    wait_for_job(at)
    assert not at.error
    plain = media_downloads(at)
    assert len(plain) == 5 and any(PATIENT in name for name in plain)
    at.toggle(key="hm_anonymise").set_value(True).run()
    assert not at.exception, at.exception
    anon = media_downloads(at)
    assert len(anon) == 5
    for name, data in anon.items():
        assert PATIENT not in name and PATIENT.encode() not in data, name
        assert str(library).encode() not in data and b"/tmp/" not in data, name
        assert name.startswith("slide-"), name
    at.run()
    assert sorted(media_downloads(at)) == sorted(anon)  # stable
