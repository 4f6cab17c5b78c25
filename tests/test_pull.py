"""`dreamforge model pull` against local servers that speak CivitAI's and the Hub's APIs:
every file verified before it is registered, tokens only where they belong, downloads
that resume, and nothing kept of what was refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.models.formats import SD1_KEY
from tests.hubs import CivitaiVersion, FakeCivitai, FakeHub, LocalHttpServer
from tests.test_models import registry, safetensors_with
from tests.test_pipeline import assert_renders_like

cli = CliRunner()


@pytest.fixture
def civitai() -> Iterator[tuple[FakeCivitai, str]]:
    fake = FakeCivitai()
    port: list[int] = []
    server = LocalHttpServer(fake.app(port))
    port.append(server.port)
    with server:
        yield fake, server.url


@pytest.fixture
def hub(tiny_model_dir: Path) -> Iterator[tuple[FakeHub, str]]:
    fake = FakeHub()
    fake.repos["acme/tiny-sdxl"] = {
        str(p.relative_to(tiny_model_dir)): p.read_bytes()
        for p in sorted(tiny_model_dir.rglob("*"))
        if p.is_file()
    }
    with LocalHttpServer(fake.app()) as server:
        yield fake, server.url


def pull(data: Path, source: str, env: dict[str, str], *extra: str) -> tuple[int, str]:
    result = cli.invoke(app, ["model", "pull", source, "--data-dir", str(data), *extra], env=env)
    return result.exit_code, result.output


def civitai_env(url: str, token: str | None = None) -> dict[str, str]:
    env = {"DREAMFORGE_CIVITAI_ENDPOINT": url, "CIVITAI_TOKEN": token or ""}
    return env


def left_in(models: Path) -> list[str]:
    return sorted(str(p.relative_to(models)) for p in models.rglob("*")) if models.exists() else []


def test_a_civitai_version_is_downloaded_verified_registered_and_renders(
    sdxl_checkpoint: Callable[..., bytes],
    tmp_path: Path,
    civitai: tuple[FakeCivitai, str],
    tiny_model_dir: Path,
) -> None:
    fake, url = civitai
    data = sdxl_checkpoint()
    fake.add(CivitaiVersion(4242, 42, "Juggernaut XL v9.safetensors", data, needs_token=True))
    code, output = pull(tmp_path / "d", "civitai:4242", civitai_env(url, fake.token))
    assert code == 0, output
    model = registry(tmp_path / "d").get("juggernaut-xl-v9")
    assert model is not None and model.status == "ready"
    assert (model.source, model.revision, model.base) == ("civitai:4242", "4242", "sdxl")
    assert model.sha256 == hashlib.sha256(data).hexdigest()
    assert Path(model.path).read_bytes() == data
    assert model.provenance["civitai"]["base_model"] == "SDXL 1.0"
    assert model.provenance["fetched_at"]
    # The token went to CivitAI's API, not to the CDN it redirected to, nor to the output.
    assert fake.cdn_requests and "authorization" not in fake.cdn_requests[-1]
    assert fake.token not in output
    assert_renders_like(model, tiny_model_dir)  # the single file loads, with configs shipped


@pytest.mark.parametrize(
    "source",
    [
        "https://civitai.com/models/42/juggernaut-xl",
        "https://civitai.com/models/42?modelVersionId=4242",
        "urn:air:sdxl:checkpoint:civitai:42@4242",
    ],
)
def test_civitai_pages_and_air_urns_name_a_version(
    sdxl_checkpoint: Callable[..., bytes],
    tmp_path: Path,
    civitai: tuple[FakeCivitai, str],
    source: str,
) -> None:
    fake, url = civitai
    fake.add(CivitaiVersion(4241, 42, "old.safetensors", sdxl_checkpoint()))
    fake.add(CivitaiVersion(4242, 42, "new.safetensors", sdxl_checkpoint("x")))
    code, output = pull(tmp_path / "d", source, civitai_env(url))
    assert code == 0, output
    assert registry(tmp_path / "d").get("new") is not None  # the newest, or the one named


def test_a_hash_mismatch_keeps_nothing_and_shows_both_hashes(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    data = sdxl_checkpoint()
    fake.add(CivitaiVersion(7, 1, "m.safetensors", data, declared_sha256="AB" * 32))
    code, output = pull(tmp_path / "d", "civitai:7", civitai_env(url))
    assert code == 1
    assert "ab" * 32 in output and hashlib.sha256(data).hexdigest() in output
    assert registry(tmp_path / "d").list() == []
    assert left_in(tmp_path / "d" / "models") == []


def test_a_login_page_instead_of_the_file_asks_for_the_token(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    fake.add(CivitaiVersion(8, 1, "gated.safetensors", sdxl_checkpoint(), needs_token=True))
    code, output = pull(tmp_path / "d", "civitai:8", civitai_env(url))
    assert code == 1 and "CIVITAI_TOKEN" in output and "web page" in output
    assert registry(tmp_path / "d").list() == []
    assert pull(tmp_path / "d", "civitai:8", civitai_env(url, fake.token))[0] == 0


def test_a_redirect_to_a_host_off_the_allow_list_is_refused(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    fake.add(CivitaiVersion(9, 1, "m.safetensors", sdxl_checkpoint(), cdn_host="localhost"))
    code, output = pull(tmp_path / "d", "civitai:9", civitai_env(url))
    assert code == 1 and "localhost is not an allowed download host" in output
    assert fake.cdn_requests == [] and registry(tmp_path / "d").list() == []
    allowed = {**civitai_env(url), "DREAMFORGE_DOWNLOAD_HOSTS": json.dumps(["localhost"])}
    assert pull(tmp_path / "d", "civitai:9", allowed)[0] == 0


def test_an_interrupted_download_resumes_where_it_stopped(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    data = sdxl_checkpoint()
    half = len(data) // 2
    fake.add(CivitaiVersion(10, 1, "big.safetensors", data, cut_first_download_at=half))
    code, output = pull(tmp_path / "d", "civitai:10", civitai_env(url))
    assert code == 1 and "run the same command again to resume" in output
    partial = tmp_path / "d" / "models" / ".big.download" / "big.safetensors.partial"
    assert partial.stat().st_size == half
    assert registry(tmp_path / "d").list() == []

    code, output = pull(tmp_path / "d", "civitai:10", civitai_env(url))
    assert code == 0, output
    assert fake.cdn_requests[-1].get("range") == f"bytes={half}-"
    model = registry(tmp_path / "d").get("big")
    assert model is not None and Path(model.path).read_bytes() == data
    assert left_in(tmp_path / "d" / "models") == ["big", "big/big.safetensors"]


def test_sd15_and_pickled_files_are_refused_before_any_download(
    tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    fake.add(
        CivitaiVersion(
            11,
            1,
            "sd15.safetensors",
            safetensors_with(tmp_path / "sd15.safetensors", SD1_KEY).read_bytes(),
            base_model="SD 1.5",
        )
    )
    fake.add(CivitaiVersion(12, 1, "old.ckpt", b"pickle"))
    code, output = pull(tmp_path / "d", "civitai:11", civitai_env(url))
    assert code == 1 and "not supported yet" in output
    code, output = pull(tmp_path / "d", "civitai:12", civitai_env(url))
    assert code == 1 and "pickled" in output
    assert fake.cdn_requests == [] and registry(tmp_path / "d").list() == []


def test_a_file_from_the_hub_is_verified_against_its_lfs_hash(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    data = sdxl_checkpoint()
    fake.repos["acme/checkpoints"] = {"sdxl/model.safetensors": data, "README.md": b"# hi"}
    env = {"HF_ENDPOINT": url}
    code, output = pull(tmp_path / "d", "hf:acme/checkpoints/sdxl/model.safetensors", env)
    assert code == 0, output
    model = registry(tmp_path / "d").get("model")
    assert model is not None and model.revision == fake.commit
    assert model.source == "hf:acme/checkpoints/sdxl/model.safetensors"
    assert model.sha256 == hashlib.sha256(data).hexdigest()

    fake.corrupt.add("sdxl/model.safetensors")
    code, output = pull(
        tmp_path / "d", "hf:acme/checkpoints/sdxl/model.safetensors", env, "--id", "again"
    )
    assert code == 1 and "does not match" in output
    assert registry(tmp_path / "d").get("again") is None


def test_a_diffusers_repository_from_the_hub_renders_like_the_original(
    tmp_path: Path, hub: tuple[FakeHub, str], tiny_model_dir: Path
) -> None:
    _, url = hub
    code, output = pull(tmp_path / "d", "hf:acme/tiny-sdxl", {"HF_ENDPOINT": url})
    assert code == 0, output
    model = registry(tmp_path / "d").get("tiny-sdxl")
    assert model is not None and (model.format, model.base) == ("diffusers", "sdxl")
    assert_renders_like(model, tiny_model_dir)


def test_a_source_in_no_known_form_is_refused_with_the_forms(tmp_path: Path) -> None:
    code, output = pull(tmp_path / "d", "ftp://example.com/model.safetensors", {})
    assert code == 1 and "hf:ORG/REPO" in output and "civitai:VERSION_ID" in output


def test_a_remote_file_name_cannot_escape_the_models_folder(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    data = sdxl_checkpoint()
    fake.add(CivitaiVersion(13, 1, "../../evil.safetensors", data))
    code, output = pull(tmp_path / "d", "civitai:13", civitai_env(url))
    assert code == 0, output
    model = registry(tmp_path / "d").get("evil")
    assert model is not None
    assert Path(model.path) == tmp_path / "d" / "models" / "evil" / "evil.safetensors"
    assert not (tmp_path / "evil.safetensors").exists()
    assert not (tmp_path / "d" / "evil.safetensors").exists()


def test_a_private_repository_needs_the_token(
    sdxl_checkpoint: Callable[..., bytes], tmp_path: Path, hub: tuple[FakeHub, str]
) -> None:
    fake, url = hub
    fake.repos["acme/private"] = {"m.safetensors": sdxl_checkpoint()}
    fake.private.add("acme/private")
    code, output = pull(tmp_path / "d", "hf:acme/private/m.safetensors", {"HF_ENDPOINT": url})
    assert code == 1 and "(401)" in output and "HF_TOKEN" in output
    env = {"HF_ENDPOINT": url, "HF_TOKEN": fake.token}
    code, output = pull(tmp_path / "d", "hf:acme/private/m.safetensors", env)
    assert code == 0, output
    assert fake.token not in output


def test_a_failed_pull_leaves_other_downloads_staging_alone(
    tmp_path: Path, civitai: tuple[FakeCivitai, str]
) -> None:
    fake, url = civitai
    fake.add(CivitaiVersion(14, 1, "m.safetensors", b"x" * 64, declared_sha256="EF" * 32))
    other = tmp_path / "d" / "models" / ".other.download"
    other.mkdir(parents=True)  # another worker's download, its file complete, not registered yet
    (other / "other.safetensors").write_bytes(b"done")
    assert pull(tmp_path / "d", "civitai:14", civitai_env(url))[0] == 1
    assert (other / "other.safetensors").read_bytes() == b"done"
    assert not (tmp_path / "d" / "models" / ".m.download").exists()
