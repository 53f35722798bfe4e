"""A local stand-in for WeChat Pay's merchant transfer API (商家转账), good enough to prove
our requests are signed right and our payouts are idempotent: it checks every request's
``WECHATPAY2-SHA256-RSA2048`` signature against the merchant's public key, keeps bills by
``out_bill_no`` (a repeat returns the same bill and pays nothing more), and can be told to
fail the next transfer or to lose its answer after paying. It signs its answers with a
"platform" key as WeChat Pay does (``Wechatpay-Signature``), can be told to forge one, and
decrypts the ``user_name`` a transfer from 2,000 yuan must carry."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from deploy.local.stack import free_port, wait_port
from services.commission.withdrawals.payouts.wechat import (
    parse_authorization,
    response_message,
    signature_message,
)


@dataclass
class FakeWechatPay:
    public_key: rsa.RSAPublicKey
    mchid: str
    serial_no: str
    platform_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    # Sign the next answer with a key that is not the platform's (an impostor in the middle).
    forge_next_answer: bool = False
    bills: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected_signatures: int = 0
    requests: int = 0
    # Behaviour of the next new transfer: "fail" (bill FAIL), "lose_answer" (pay, answer 500),
    # "down" (answer 503, create nothing).
    next_transfer: list[str] = field(default_factory=list)

    def paid_total(self, openid: str) -> int:
        return sum(
            b["transfer_amount"]
            for b in self.bills.values()
            if b["openid"] == openid and b["state"] == "SUCCESS"
        )

    def verify(self, request: Request, body: str) -> str | None:
        header = request.headers.get("authorization", "")
        try:
            fields = parse_authorization(header)
        except ValueError:
            return "no WECHATPAY2-SHA256-RSA2048 authorization"
        if fields.get("mchid") != self.mchid or fields.get("serial_no") != self.serial_no:
            return "unknown merchant or certificate serial"
        if abs(time.time() - int(fields.get("timestamp", "0"))) > 300:
            return "timestamp too far from now"
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        message = signature_message(
            request.method, url, fields["timestamp"], fields.get("nonce_str", ""), body
        )
        try:
            self.public_key.verify(
                base64.b64decode(fields.get("signature", "")),
                message,
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "signature does not verify"
        return None

    def signed(self, content: dict[str, Any], status_code: int = 200) -> JSONResponse:
        response = JSONResponse(content, status_code=status_code)
        body = bytes(response.body).decode()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        key = self.platform_key
        if self.forge_next_answer:
            self.forge_next_answer = False
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signature = key.sign(
            response_message(timestamp, nonce, body), padding.PKCS1v15(), hashes.SHA256()
        )
        response.headers["Wechatpay-Timestamp"] = timestamp
        response.headers["Wechatpay-Nonce"] = nonce
        response.headers["Wechatpay-Signature"] = base64.b64encode(signature).decode()
        response.headers["Wechatpay-Serial"] = "PUB_KEY_ID_0000000001"
        return response

    def user_name(self, data: dict[str, Any]) -> str | None:
        sealed = data.get("user_name")
        if not sealed:
            return None
        return self.platform_key.decrypt(
            base64.b64decode(sealed),
            padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
        ).decode()

    def app(self) -> FastAPI:
        app = FastAPI()

        def refuse(reason: str) -> JSONResponse:
            self.rejected_signatures += 1
            return JSONResponse({"code": "SIGN_ERROR", "message": reason}, status_code=401)

        @app.post("/v3/fund-app/mch-transfer/transfer-bills")
        async def create(request: Request) -> JSONResponse:
            self.requests += 1
            body = (await request.body()).decode()
            problem = self.verify(request, body)
            if problem:
                return refuse(problem)
            data = await request.json()
            out_bill_no = data["out_bill_no"]
            if not (1 <= len(out_bill_no) <= 32 and out_bill_no.isalnum()):
                return self.signed({"code": "PARAM_ERROR", "message": "out_bill_no"}, 400)
            if int(data["transfer_amount"]) >= 200_000 and not self.user_name(data):
                return self.signed({"code": "PARAM_ERROR", "message": "user_name required"}, 400)
            bill = self.bills.get(out_bill_no)
            if bill is None:
                behaviour = self.next_transfer.pop(0) if self.next_transfer else "pay"
                if behaviour == "down":
                    return JSONResponse({"code": "SYSTEM_ERROR", "message": "busy"}, 503)
                bill = {
                    "out_bill_no": out_bill_no,
                    "transfer_bill_no": f"1330000{len(self.bills) + 1:08d}",
                    "openid": data["openid"],
                    "transfer_amount": int(data["transfer_amount"]),
                    "state": "FAIL" if behaviour == "fail" else "SUCCESS",
                    "fail_reason": "PAYEE_ACCOUNT_ABNORMAL" if behaviour == "fail" else None,
                    "user_name": self.user_name(data),
                }
                self.bills[out_bill_no] = bill
                if behaviour == "lose_answer":
                    return JSONResponse({"code": "SYSTEM_ERROR", "message": "lost"}, 500)
            return self.signed({k: v for k, v in bill.items() if k != "user_name" and v})

        @app.get("/v3/fund-app/mch-transfer/transfer-bills/out-bill-no/{out_bill_no}")
        async def query(out_bill_no: str, request: Request) -> JSONResponse:
            self.requests += 1
            problem = self.verify(request, "")
            if problem:
                return refuse(problem)
            bill = self.bills.get(out_bill_no)
            if bill is None:
                return self.signed({"code": "NOT_FOUND", "message": "no such bill"}, 404)
            return self.signed({k: v for k, v in bill.items() if k != "user_name" and v})

        return app


class FakeServer:
    """Runs an ASGI app with uvicorn in a thread on a free port."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        wait_port("127.0.0.1", self.port, 10)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
