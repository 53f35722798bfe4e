"""WeChat Pay merchant transfer (商家转账到零钱, API v3) as a payout provider.

``POST /v3/fund-app/mch-transfer/transfer-bills`` with our payout id as ``out_bill_no``
(≤ 32 letters and digits: WeChat's idempotency key, a repeat returns the same bill), and
``GET /v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{out_bill_no}`` to follow it.
Every request is signed (``WECHATPAY2-SHA256-RSA2048``): RSA-SHA256 with the merchant API
private key over ``method\\nurl\\ntimestamp\\nnonce\\nbody\\n``.

With WeChat Pay's platform public key configured (微信支付公钥 and its id), every answer's
``Wechatpay-Signature`` is verified over ``timestamp\nnonce\nbody\n`` (an answer that does not
verify is treated as no answer: the outcome stays unknown), and the payee's real name is sent
RSA-OAEP encrypted as ``user_name``, which WeChat requires from 2,000 yuan per transfer.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from services.commission.withdrawals.payouts import PayoutRequest, PayoutResult, PayoutUnknown

TRANSFER_PATH = "/v3/fund-app/mch-transfer/transfer-bills"
QUERY_PATH = "/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{out_bill_no}"
SCHEMA = "WECHATPAY2-SHA256-RSA2048"
# Bill states: final ones decide, the rest mean "still on its way".
_PAID_STATES = {"SUCCESS"}
# WeChat wants the payee's real name (encrypted) on transfers of 2,000 yuan and more.
USER_NAME_FROM_AMOUNT = 200_000
SIGNATURE_MAX_AGE_SECONDS = 300
_FAILED_STATES = {"FAIL", "CANCELLED"}


def signature_message(method: str, url: str, timestamp: str, nonce: str, body: str) -> bytes:
    """The string WeChat Pay v3 signs: each part followed by a newline."""
    return f"{method}\n{url}\n{timestamp}\n{nonce}\n{body}\n".encode()


def parse_authorization(header: str) -> dict[str, str]:
    """``WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",…`` → its fields."""
    schema, _, rest = header.partition(" ")
    if schema != SCHEMA:
        raise ValueError("not a WeChat Pay v3 authorization")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value.strip('"')
    return fields


def _pem(pem_or_path: str) -> bytes:
    text = pem_or_path.strip()
    return text.encode() if text.startswith("-----BEGIN") else Path(text).read_bytes()


def load_private_key(pem_or_path: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(_pem(pem_or_path), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the WeChat Pay merchant key is an RSA private key")
    return key


def load_public_key(pem_or_path: str) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(_pem(pem_or_path))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the WeChat Pay platform public key is an RSA public key")
    return key


def response_message(timestamp: str, nonce: str, body: str) -> bytes:
    """The string WeChat Pay signs in its answers."""
    return f"{timestamp}\n{nonce}\n{body}\n".encode()


def encrypt_sensitive(public_key: rsa.RSAPublicKey, value: str) -> str:
    """A sensitive field (``user_name``) as WeChat Pay v3 wants it: RSA-OAEP (SHA-1), base64."""
    sealed = public_key.encrypt(
        value.encode(),
        padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
    )
    return base64.b64encode(sealed).decode()


class WechatTransferProvider:
    name = "wechat"

    def __init__(
        self,
        *,
        base_url: str,
        mchid: str,
        appid: str,
        serial_no: str,
        private_key: rsa.RSAPrivateKey,
        transfer_scene_id: str = "1000",
        timeout_seconds: float = 10.0,
        platform_public_key: rsa.RSAPublicKey | None = None,
        platform_public_key_id: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.mchid = mchid
        self.appid = appid
        self.serial_no = serial_no
        self.private_key = private_key
        self.transfer_scene_id = transfer_scene_id
        self.timeout_seconds = timeout_seconds
        self.platform_public_key = platform_public_key
        self.platform_public_key_id = platform_public_key_id

    def authorization(self, method: str, url: str, body: str) -> str:
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        signature = self.private_key.sign(
            signature_message(method, url, timestamp, nonce, body),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        return (
            f'{SCHEMA} mchid="{self.mchid}",nonce_str="{nonce}",'
            f'signature="{base64.b64encode(signature).decode()}",'
            f'timestamp="{timestamp}",serial_no="{self.serial_no}"'
        )

    async def _call(self, method: str, url: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        body = orjson.dumps(payload).decode() if payload is not None else ""
        headers = {
            "Authorization": self.authorization(method, url, body),
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        if self.platform_public_key_id:
            # Which WeChat key encrypted the sensitive fields (and should sign the answer).
            headers["Wechatpay-Serial"] = self.platform_public_key_id
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
                response = await client.request(
                    method, self.base_url + url, content=body or None, headers=headers
                )
        except httpx.HTTPError as exc:
            raise PayoutUnknown(f"wechat pay unreachable: {type(exc).__name__}") from exc
        if self.platform_public_key is not None and response.status_code < 500:
            self._verify_answer(response)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 500 or response.status_code == 429:
            raise PayoutUnknown(f"wechat pay answered {response.status_code}")
        if response.status_code >= 400:
            code = str(data.get("code", response.status_code))
            # NOT_FOUND on a query: the bill was never created; anything else on a create is
            # a refusal of this bill (bad openid, no balance, ...), which is final for it.
            return {"state": "FAIL", "fail_reason": f"{code}: {data.get('message', '')}"[:500]}
        return data

    def _verify_answer(self, response: httpx.Response) -> None:
        """An answer not signed by WeChat Pay is no answer: the outcome stays unknown."""
        assert self.platform_public_key is not None
        headers = response.headers
        timestamp = headers.get("Wechatpay-Timestamp", "")
        try:
            fresh = abs(time.time() - int(timestamp)) <= SIGNATURE_MAX_AGE_SECONDS
            signature = base64.b64decode(headers.get("Wechatpay-Signature", ""), validate=True)
            self.platform_public_key.verify(
                signature,
                response_message(timestamp, headers.get("Wechatpay-Nonce", ""), response.text),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature) as exc:
            raise PayoutUnknown("wechat pay answer does not carry a valid signature") from exc
        if not fresh:
            raise PayoutUnknown("wechat pay answer signature is too old")

    @staticmethod
    def _result(data: dict[str, Any]) -> PayoutResult:
        state = str(data.get("state", ""))
        reference = data.get("transfer_bill_no")
        if state in _PAID_STATES:
            return PayoutResult(state="paid", reference=reference)
        if state in _FAILED_STATES:
            reason = str(data.get("fail_reason") or state)
            return PayoutResult(state="failed", reference=reference, failure_reason=reason)
        return PayoutResult(state="processing", reference=reference)

    async def send(self, request: PayoutRequest) -> PayoutResult:
        if request.currency != "CNY":
            return PayoutResult(state="failed", failure_reason="wechat pays CNY only")
        payload: dict[str, Any] = {
            "appid": self.appid,
            "out_bill_no": request.payout_id,
            "transfer_scene_id": self.transfer_scene_id,
            "openid": request.destination,
            "transfer_amount": request.amount,
            "transfer_remark": request.remark[:32],
            "transfer_scene_report_infos": [
                {"info_type": "岗位类型", "info_content": "推广员"},
                {"info_type": "报酬说明", "info_content": "推广佣金"},
            ],
        }
        if request.amount >= USER_NAME_FROM_AMOUNT:
            if self.platform_public_key is None:
                return PayoutResult(
                    state="failed",
                    failure_reason="transfers from 2,000 yuan need the payee name encrypted "
                    "with the WeChat Pay public key, which is not configured",
                )
            payload["user_name"] = encrypt_sensitive(self.platform_public_key, request.real_name)
        return self._result(await self._call("POST", TRANSFER_PATH, payload))

    async def query(self, payout_id: str) -> PayoutResult:
        return self._result(await self._call("GET", QUERY_PATH.format(out_bill_no=payout_id), None))
