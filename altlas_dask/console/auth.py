"""Who the console acts as: an API key entered once per browser session, checked against the REST API's key
store (``altlas-dask keys create``, the same ``accounting.api_keys`` file; never the scheduler's accounting database).

The console is a delegate (``security.delegates``): towards the router it acts as the key's user, and vouches
that an admin key's user is an admin. Nobody picks a user name any more; admin views are offered to admin keys.
"""

from __future__ import annotations

import streamlit as st

from altlas_dask.accounting.api_keys import KeyStore, KeyStoreError, KeyVerifier, Principal
from altlas_dask.config import load_config

KEY_HELP = "Your API key (ak_...), from `altlas-dask keys create --user NAME`; kept for this browser session only."


@st.cache_resource(show_spinner=False)
def key_store() -> KeyVerifier:
    return KeyStore.of(load_config())


def principal() -> Principal | None:
    """The signed-in key's user and role (``None`` before sign-in)."""
    return st.session_state.get("principal")


def is_admin() -> bool:
    who = principal()
    return who is not None and who.is_admin


def _sign_in() -> None:
    key = (st.session_state.get("api_key") or "").strip()
    st.session_state["api_key"] = ""  # never kept in the session, only the principal it proved
    try:
        who = key_store().verify(key)
    except KeyStoreError as exc:
        st.session_state["auth_error"] = f"The console cannot check API keys: {exc}"
        return
    if who is None:
        st.session_state["auth_error"] = "Invalid or revoked API key."
        return
    st.session_state.pop("auth_error", None)
    st.session_state["principal"] = who
    st.session_state["user"] = who.user


def _sign_out() -> None:
    for name in ("principal", "user", "auth_error"):
        st.session_state.pop(name, None)


def sidebar() -> None:
    """The sign-in box, or who you are and a sign-out button."""
    who = principal()
    if who is None:
        st.text_input("API key", type="password", key="api_key", on_change=_sign_in, help=KEY_HELP)
        if error := st.session_state.get("auth_error"):
            st.error(error, icon=":material/lock:")
        return
    st.markdown(f"Signed in as **{who.user}** ({'admin' if who.is_admin else 'user'})")
    st.button("Sign out", key="sign_out", on_click=_sign_out)
