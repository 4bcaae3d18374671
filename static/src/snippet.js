// ct-gateway form-capture snippet: the readable source of static/snippet.js.
// `npm run build` (scripts/build-snippet.mjs, esbuild) minifies it into static/snippet.js, the
// file GET /snippet.js serves; edit this file and rebuild, never the built one (CI compares them).
//
// <script src="/ct-gateway/snippet.js" data-mod-id="abcd1234" async></script>; optional
// data-endpoint (default: "leads" beside this script), data-forms (a CSS selector), data-subject.
// Form markup: data-ct-field="fio|phoneNumber|email|comment|subject|tags|custom:NAME",
// data-ct-skip, data-ct-honeypot, data-ct-subject and data-ct-ignore (on the form).
// Manual API, with a stub for calls made before this script loads:
//   window.ctLeads=window.ctLeads||{q:[],send:function(d){var q=this.q;return new Promise(function(r){q.push([d,r])})}};
//   ctLeads.send({phoneNumber:"...", fio:"..."}).then(function(answer){...});
// Never throws into the page, never calls preventDefault, never delays the site's handlers.
//
// Targets: the last two versions of Chrome, Firefox, Safari and Yandex Browser; no polyfills.

// The globals come in as parameters so that the minifier can give them one-letter names.
((window, document) => {
  // One try around everything: a fault in the snippet must never become the page's error.
  try {
    // Read now: document.currentScript is only set while this script first runs.
    const script = document.currentScript;
    // Configuration comes from this <script> tag's own data-* attributes.
    const attribute = (name) => script.getAttribute("data-" + name);
    // One short name for the clock, which the queue, the dedup and the wait all read.
    const now = Date.now;
    // The gateway fills this slot with its CTGW_MOD_ID, so a bare <script src> knows the counter.
    const modId = attribute("mod-id") || /*CTGW_MOD_ID*/"";
    const formSelector = attribute("forms");
    const scriptSubject = attribute("subject");
    // "leads" beside this script: the gateway is found behind whatever prefix serves the script.
    const endpoint = attribute("endpoint") || new URL("leads", script.src).href;
    // Sends still polling for Calltouch's session id, so that leaving the page can hurry them.
    const waiting = new Set();
    // The last form submit: k its data, n its request number, t its time (for the dedup).
    let lastSubmit = {};
    // True from pagehide (the page is being left) until pageshow (back from the cache).
    let pageLeft;

    // Values as trimmed text; a missing one is empty rather than "undefined".
    const text = (value) => ((value ?? "") + "").trim();

    // Unique enough per lead; the gateway deduplicates on it, so a retry must reuse it.
    const newRequestNumber = () => "ctgw-" + now() + Math.random().toString(36).slice(2);

    // The retry queue in localStorage.ctgw_q, rows {t: queued at, l: the lead}: `update` maps the
    // rows; at most 20 are kept, none older than 72 h (2592e5 ms), and when storage is
    // unavailable (private mode, blocked cookies) the queue is simply empty.
    const queue = (update) => {
      try {
        let rows = JSON.parse(localStorage.ctgw_q || "[]");
        if (update) {
          rows = update(rows).filter((row) => row.t > now() - 2592e5).slice(-20);
          localStorage.ctgw_q = JSON.stringify(rows);
        }
        return rows;
      } catch {
        return [];
      }
    };

    // POSTs a lead. It is queued first and stays queued until the gateway answers for good
    // (2xx, or a 4xx other than 429); a 429, a 5xx or a network error leave it for a retry,
    // silently: the answer is {status: "deferred"}, never a rejection.
    const send = (lead) => {
      const number = lead.requestNumber;
      const body = JSON.stringify(lead);
      const forget = () => queue((rows) => rows.filter((row) => row.l.requestNumber != number));
      queue((rows) =>
        rows.some((row) => row.l.requestNumber == number) ? rows : rows.concat({ t: now(), l: lead }),
      );
      // keepalive: the request outlives the page, which a form's navigation is about to leave.
      // Every target browser has fetch, so the sendBeacon fallback for those without it is gone.
      // A browser (or an extension) that refuses keepalive gets the same request without it:
      // the lead of a form that stays on the page still gets out.
      return fetch(endpoint, { method: "POST", keepalive: true, body })
        .catch(() => fetch(endpoint, { method: "POST", body }))
        .then((response) =>
          response.status > 499 || response.status == 429
            ? { status: "deferred" }
            : (forget(), response.json()),
        )
        .catch(() => ({ status: "deferred" }));
    };

    // Leads a failed attempt left behind: sent again when the browser is back online, or soon
    // after the next page load.
    const retryQueued = () => queue().forEach((row) => send(row.l));

    // Calltouch's own script knows the visit's session, if the counter is known and it has loaded.
    const calltouchSession = () => {
      try {
        return text(modId && window.ct("calltracking_params", modId)?.sessionId);
      } catch {}
    };

    // Calltouch's cookie, the fallback when its script does not answer (a sandboxed frame throws).
    const cookieSession = () => {
      try {
        return document.cookie.match(/(^|; )_ct_session_id=(\d+)/)?.[2];
      } catch {}
    };

    // Sends a lead with the visit's session id. Calltouch's script may still be loading: it is
    // asked every 99 ms for up to 1.5 s, or until the page is left, then the cookie is tried;
    // an id that is not the digits Calltouch uses is dropped rather than sent.
    const sendWithSession = (lead) =>
      new Promise((resolve) => {
        const started = now();
        const attempt = () => {
          try {
            let session = lead.sessionId || calltouchSession();
            if (!session && !pageLeft && modId && window.ct && now() - started < 1500) {
              return setTimeout(attempt, 99);
            }
            waiting.delete(attempt);
            session ||= cookieSession();
            lead.sessionId = /^\d{1,20}$/.test(session) ? session : undefined;
            resolve(send(lead));
          } catch {
            resolve({});
          }
        };
        waiting.add(attempt);
        attempt();
      });

    // What every lead carries, whichever way it came: the page, a subject, a request number.
    const stamp = (lead) => {
      lead.requestUrl = location.href.slice(0, 2048);
      lead.subject = text(lead.subject || scriptSubject || document.title).slice(0, 256);
      lead.requestNumber ||= newRequestNumber();
      return lead;
    };

    // What a field without data-ct-field holds, guessed from its type, name, id, autocomplete,
    // placeholder and the text of its (first) <label>, in English and Russian: Bitrix names its
    // fields form_text_1, form_text_2, and only the labels say which is the phone. Choices and
    // lists are never contact fields.
    const guessKind = (field, type) => {
      // labels is null for a hidden input.
      const hints = [
        type, field.name, field.id, field.autocomplete, field.placeholder, field.labels?.[0]?.textContent,
      ]
        .join()
        .toLowerCase();
      if (/^(check|radio|select)/.test(type)) return "";
      if (/mail|почт/.test(hints)) return "email";
      if (/phone|tel|mob|телеф|моб/.test(hints)) return "phoneNumber";
      // "name" alone would take company names and user names for a person's name.
      if (/fio|фио|имя|фамил|name/.test(hints) && !/compan|компан|user/.test(hints)) return "fio";
      if (/textarea|comment|messag|коммент|сообщ/.test(hints)) return "comment";
      if (/subject|тема/.test(hints)) return "subject";
      return "";
    };

    // Whether a value can be what its kind says: a contact the gateway would refuse is kept as a
    // custom field instead (a Russian phone: 10 digits, with or without the leading 7 or 8).
    const plausible = (kind, value) =>
      kind == "email"
        ? /^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$/.test(value)
        : kind != "phoneNumber" || /^[78]?\d{10}$/.test(value.replace(/\D/g, ""));

    // Fields that never leave the page, judged by name (or by the NAME of custom:NAME).
    // Anywhere in the name: passwords, card numbers, anti-forgery tokens, captchas, secrets,
    // passports ("pass" has passport; pasport, паспорт) and SNILS, the pension number.
    const SECRET_IN_NAME = /pas[sp]|парол|card|cv[vc]|[cx]srf|token|nonce|captcha|secret|snils|снилс|паспорт/i;
    // PINs, one-time codes and INNs (the tax number) only as a word of their own (pin, sms_code,
    // ИНН): inside other words these letters are harmless (shipping, dinner, postcode).
    const SECRET_WORD = /(?<!\p{L})(pin|otp|code|inn|пин|код|инн)(?!\p{L})/iu;
    // camelCase is split into words for SECRET_WORD only (smsCode is "sms Code"), so that the
    // older rule above still sees the name exactly as before.
    const secretName = (name) =>
      SECRET_IN_NAME.test(name) || SECRET_WORD.test(name.replace(/(?<=\p{Ll})(?=\p{Lu})/gu, " "));

    // A form's lead, or nothing when it has no contact (a search form, a login form).
    const readForm = (form) => {
      const lead = {};
      const customFields = {};
      // form.elements, not a query: it also holds controls tied to the form by form="id".
      for (const field of form.elements) {
        const type = field.type;
        const declared = field.dataset.ctField || "";
        const isCustom = /^custom:/.test(declared);
        let name = isCustom ? declared.slice(7) : field.name || field.id || "";
        // The honeypot is always sent, empty or not: the gateway scores it.
        if ("ctHoneypot" in field.dataset) {
          lead._honeypot = text(field.value);
          continue;
        }
        // Buttons, files, disabled and skipped fields and secrets are never read; hidden fields
        // only when marked, since most carry the site's state rather than the visitor's words.
        if (
          !type ||
          field.disabled ||
          "ctSkip" in field.dataset ||
          /^(password|file|submit|button|reset|image)$/.test(type) ||
          (type == "hidden" && !declared) ||
          secretName(name) ||
          // The browser's own marks: card fields (cc-number, cc-exp...) and one-time codes.
          /^cc-|one-time-code/.test(field.autocomplete)
        ) {
          continue;
        }
        const value =
          type == "select-multiple"
            ? [...field.selectedOptions].map((option) => option.value).join(", ")
            : /^(checkbox|radio)$/.test(type) && !field.checked
              ? ""
              : text(field.value);
        if (!value) continue;
        const kind = isCustom ? "" : declared || guessKind(field, type);
        // A name split over several fields (first, last) becomes one fio.
        if (kind == "fio" && lead.fio) {
          lead.fio = (lead.fio + " " + value).slice(0, 256);
          continue;
        }
        // The first plausible value of each kind is the lead's; the rest become custom fields.
        if (/^(fio|phoneNumber|email|subject|comment|tags)$/.test(kind) && !lead[kind] && plausible(kind, value)) {
          lead[kind] = value.slice(0, kind == "comment" ? 4096 : 256);
          continue;
        }
        // Brackets (services[]) are PHP's array syntax, not part of the name; at most 20 custom
        // fields, and a repeated name (checkboxes) joins its values.
        name = name.replace(/[[\]]/g, "").slice(0, 64);
        if (name && (customFields[name] || Object.keys(customFields).length < 20)) {
          customFields[name] = ((customFields[name] ? customFields[name] + ", " : "") + value).slice(0, 1024);
        }
      }
      if (!(lead.fio || lead.phoneNumber || lead.email)) return;
      lead.customFields = customFields;
      // getAttribute: form.name and form.id would be a control called "name" or "id".
      lead.subject ||= form.dataset.ctSubject || scriptSubject || form.getAttribute("name") || form.getAttribute("id");
      return lead;
    };

    // The capture phase on document sees every form, those added later too, before the site's
    // handlers can stop the event; it only reads, so those handlers run unchanged.
    document.addEventListener(
      "submit",
      (event) => {
        try {
          const form = event.target;
          let lead;
          // A form the browser would refuse to submit is not a lead yet (a script can submit
          // around the browser's validation). Novalidate forms validate themselves, and so do
          // the submits of formnovalidate buttons ("just call me" beside "send").
          if (
            // localName, not instanceof HTMLFormElement: as sure for a submit's target, and the
            // bytes it saves pay for the checks of issue 17's forms within the budget.
            form.localName == "form" &&
            !("ctIgnore" in form.dataset) &&
            (!formSelector || form.matches(formSelector)) &&
            (form.noValidate || event.submitter?.formNoValidate || form.checkValidity()) &&
            (lead = readForm(form))
          ) {
            // A double submit of the same data within 10 s keeps its number: the gateway dedups it.
            const data = JSON.stringify(lead);
            lead.requestNumber =
              lastSubmit.k == data && now() - lastSubmit.t < 1e4 ? lastSubmit.n : newRequestNumber();
            lastSubmit = { k: data, n: lead.requestNumber, t: now() };
            // ms since page load, for the gateway's bot score; retries keep the first value.
            lead._elapsed = Math.round(performance.now());
            sendWithSession(stamp(lead));
          }
        } catch {}
      },
      true,
    );

    // Leaving the page: stop waiting for Calltouch and send now, while keepalive still can.
    window.addEventListener("pagehide", () => {
      pageLeft = true;
      waiting.forEach((attempt) => attempt());
    });
    // Back from the back/forward cache, the page is the visitor's again: Calltouch is waited for.
    window.addEventListener("pageshow", () => (pageLeft = false));
    window.addEventListener("online", retryQueued);
    // A second later, so the page's own first requests go first.
    setTimeout(retryQueued, 999);

    // The manual API, on a copy so that the caller's object is left as it was; it replaces the
    // stub and replays the calls the stub queued before this script ran.
    const stub = window.ctLeads;
    const api = (window.ctLeads = { send: (data) => sendWithSession(stamp({ ...data })) });
    // then(undefined), for a call queued without a resolver, changes nothing.
    stub?.q?.forEach(([data, resolve]) => api.send(data).then(resolve));
  } catch {}
})(window, document);
