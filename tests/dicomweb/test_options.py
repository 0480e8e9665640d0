"""Addresses, credentials and transport rules: usage errors before any work, secrets never echoed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cxrtool.dicomweb import parse_dicomweb_url
from cxrtool.dicomweb.connection import (
    ConnectionOptions,
    check_transport,
    make_client,
    system_ca_bundle,
)
from cxrtool.dicomweb.source import parse_qido
from cxrtool.errors import CxrError


class TestAddress:
    def test_levels(self):
        u = parse_dicomweb_url("dicomweb+https://pacs.example:8443/dicom-web/studies/1.2.3/series/4.5/instances/6")
        assert (u.root, u.study, u.series, u.instance) == ("https://pacs.example:8443/dicom-web", "1.2.3", "4.5", "6")
        assert str(u) == "dicomweb+https://pacs.example:8443/dicom-web/studies/1.2.3/series/4.5/instances/6"
        assert parse_dicomweb_url("dicomweb+http://h/dicom-web/").root == "http://h/dicom-web"

    @pytest.mark.parametrize(
        "text",
        [
            "http://h/dicom-web",
            "dicomweb+ftp://h/x",
            "dicomweb+http://h/x/studies/abc",
            "dicomweb+http://h/x/series/1.2",
            "dicomweb+http://h/x?StudyDate=1",
            "dicomweb+http:///x",
            "dicomweb+http://h:port/x",
        ],
    )
    def test_refused(self, text):
        with pytest.raises(CxrError):
            parse_dicomweb_url(text)

    def test_credentials_in_the_address_are_refused_without_echoing_them(self):
        with pytest.raises(CxrError) as err:
            parse_dicomweb_url("dicomweb+https://alice:s3cret-pw@h/dicom-web")
        assert "s3cret-pw" not in str(err.value) and "--token-env" in str(err.value)

    def test_qido(self):
        assert parse_qido("ModalitiesInStudy=CR&StudyDate=20261201-") == {
            "ModalitiesInStudy": "CR",
            "StudyDate": "20261201-",
        }
        for bad in ("", "CR", "=CR"):
            with pytest.raises(CxrError):
                parse_qido(bad)


class TestCredentials:
    def test_token_from_env_and_file(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CXR_T", "  abc.def  \n")
        assert ConnectionOptions(token_env="CXR_T").credentials().token == "abc.def"
        (tmp_path / "t").write_text("xyz\n")
        creds = ConnectionOptions(token_file=tmp_path / "t").credentials()
        assert creds.token == "xyz" and "xyz" not in repr(creds) and repr(creds) == "Credentials(bearer token)"

    def test_basic_auth_file(self, tmp_path):
        (tmp_path / "a").write_text("orthanc:pa:ss\n")
        creds = ConnectionOptions(basic_auth_file=tmp_path / "a").credentials()
        assert (creds.user, creds.password) == ("orthanc", "pa:ss") and "pa:ss" not in repr(creds)

    @pytest.mark.parametrize("content", ["", "nocolon", "a\nb"])
    def test_bad_basic_auth(self, tmp_path, content):
        (tmp_path / "a").write_text(content)
        with pytest.raises(CxrError):
            ConnectionOptions(basic_auth_file=tmp_path / "a").credentials()

    def test_unset_env_and_two_sources_are_usage_errors(self, tmp_path, monkeypatch):
        monkeypatch.delenv("CXR_NONE", raising=False)
        with pytest.raises(CxrError, match="CXR_NONE"):
            ConnectionOptions(token_env="CXR_NONE").credentials()
        with pytest.raises(CxrError, match="one credential source"):
            ConnectionOptions(token_env="A", basic_auth_file=tmp_path / "a")
        with pytest.raises(CxrError, match="ca-file"):
            ConnectionOptions(ca_file=tmp_path / "missing.pem")

    def test_no_secret_over_plain_http_to_another_machine(self, monkeypatch):
        monkeypatch.setenv("CXR_T", "abc")
        creds = ConnectionOptions(token_env="CXR_T").credentials()
        with pytest.raises(CxrError, match="https"):
            check_transport(parse_dicomweb_url("dicomweb+http://pacs.example/dicom-web"), creds)
        check_transport(parse_dicomweb_url("dicomweb+http://127.0.0.1:8042/dicom-web"), creds)  # loopback: fine
        check_transport(parse_dicomweb_url("dicomweb+https://pacs.example/dicom-web"), creds)

    def test_client_session(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CXR_T", "abc")
        url = parse_dicomweb_url("dicomweb+https://pacs.example/dicom-web")
        client = make_client(
            url, ConnectionOptions(token_env="CXR_T", timeout=7), ConnectionOptions(token_env="CXR_T").credentials()
        )
        session = client._session
        assert session.verify == (system_ca_bundle() or True) and client._timeout == (7, 7)
        assert "Authorization" not in session.headers  # not in the headers dicomweb-client logs
        import requests

        prepared = session.prepare_request(requests.Request("GET", "https://pacs.example/dicom-web/studies"))
        assert prepared.headers["Authorization"] == "Bearer abc"
        pem = tmp_path / "ca.pem"
        pem.write_text("-----BEGIN CERTIFICATE-----\n")
        client = make_client(url, ConnectionOptions(ca_file=pem), ConnectionOptions().credentials())
        assert client._session.verify == str(pem)


class TestCli:
    def _run(self, args, tmp_path, env=None):
        from cxrtool.cli.main import app

        return CliRunner().invoke(
            app, ["predict", *args, "-m", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "p.csv")], env=env
        )

    @pytest.mark.parametrize(
        "args, message",
        [
            (["--qido", "StudyDate=2026"], "go together"),
            (["--dicomweb", "dicomweb+http://h/dicom-web"], "go together"),
            (["dicomweb+http://h/dicom-web"], "name a study"),
            (["dicomweb+http://h/x/studies/1.2", "somefile.png"], "either files or DICOMweb"),
            (["dicomweb+http://h/x/studies/1.2", "--token-env", "CXR_UNSET_TOKEN"], "CXR_UNSET_TOKEN"),
            (["dicomweb+http://h/x/studies/1.2", "--dicom-out", "dicomweb+http://h/x/studies/1.2"], "service root"),
            (["dicomweb+http://h/x/studies/1.2", "--dicom-out", "results/"], "back over DICOMweb"),
        ],
    )
    def test_usage_errors_before_any_work(self, tmp_path, args, message):
        res = self._run(args, tmp_path)
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "p.csv").exists()

    def test_token_over_plain_http_refused_and_not_echoed(self, tmp_path):
        res = self._run(
            ["dicomweb+http://pacs.example/dicom-web/studies/1.2", "--token-env", "CXR_T"],
            tmp_path,
            env={"CXR_T": "very-secret-token-123"},
        )
        assert res.exit_code == 2 and "https" in res.output and "very-secret-token-123" not in res.output
