"""Finding the inputs of ``hf-medmamba predict`` (files, recursive folders, globs, DICOM series folders) and naming
their outputs (`hf_medmamba.tools.cli_inputs`)."""

from pathlib import Path

from hf_medmamba.tools import cli_inputs


def test_input_collection_and_output_names(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for name in ("a/x.png", "a/x.dcm", "a/deep/y.nii.gz", "a/.hidden.png", "a/readme.md", "b/x.png"):
        (tmp_path / name).write_bytes(b"")
    out = tmp_path / "a" / "out"
    out.mkdir()
    (out / "old_mask.png").write_bytes(b"")  # earlier outputs inside an input folder are not inputs
    found, unmatched = cli_inputs.collect_inputs(
        [str(tmp_path / "a"), str(tmp_path / "a" / "x.png"), str(tmp_path / "*" / "x.png"), "nothing*.png"], out
    )
    assert [f.relative_to(tmp_path).as_posix() for f, _ in found] == [
        "a/x.dcm",
        "a/x.png",
        "a/deep/y.nii.gz",
        "b/x.png",
    ]
    assert unmatched == ["nothing*.png"]
    stems = cli_inputs.output_stems([relative for _, relative in found])
    assert [s.as_posix() for s in stems] == ["x_dcm", "x_png", "deep/y", "b/x"]
    assert cli_inputs.output_stems([Path("x.png"), Path("x.png")]) == [Path("x_png"), Path("x_png_2")]

    # DICOM series: each folder argument or folder matched by a glob is one input, named by the whole folder name
    (tmp_path / "b" / "1.2.840.5").mkdir()
    found, _ = cli_inputs.collect_inputs(
        [str(tmp_path / "a"), str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "*")], out, series=True
    )
    assert [(f.relative_to(tmp_path).as_posix(), r.as_posix()) for f, r in found] == [
        ("a", "a"),
        ("a/x.png", "x.png"),
        ("b/1.2.840.5", "1.2.840.5"),
        ("b/x.png", "x.png"),
    ]
    folders = {r for f, r in found if f.is_dir()}
    stems = cli_inputs.output_stems([r for _, r in found], folders)
    assert [s.as_posix() for s in stems] == ["a", "x_png", "1.2.840.5", "x_png_2"]
