"""The fake platform's organization, OAuth credential, sandbox and tenant: what `fake_credentials` configures
an AEPPlatform with, and what the fake accepts."""

from __future__ import annotations

import uuid

from aep_assets.resources.aep import http

GATEWAY = http.gateway_url("prod")
IMS_TOKEN_URL = http.ims_token_url("prod")

ORG_ID = "FAKE0RG0000000000000000@AdobeOrg"
CLIENT_ID = "fake-client-id-4c1e"
CLIENT_SECRET = "p8e-FAKE-client-secret-NEVER-LOG-0x5eCr3t"
S3_ACCESS_KEY = "AKIAFAKEFAKEFAKEFAKE"
S3_SECRET_KEY = "FAKE/s3/secret/NEVER/LOG/abcdefghijklmno"  # AWS's shape: 40 characters
SCOPES = "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session"
SANDBOX = "cmle-dev"
SANDBOX_ID = "6f2ff5d9-8b34-4d49-8c27-2ce3b4e5fa0a"
TENANT = "acme"


def new_uuid() -> str:
    """A fresh id in the UUID form Segmentation and Flow Service use."""
    return str(uuid.uuid4())
