// ct-gateway form-capture snippet: the readable source of static/snippet.js.
// `npm run build` (scripts/build-snippet.mjs, esbuild) minifies it into static/snippet.js, the
// file GET /snippet.js serves; edit this file and rebuild, never the built one (CI compares them).
// esbuild does the shrinking (names, whitespace, dead code): this file is written for its
// readers, and only its data (patterns, limits) is kept short on purpose.
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
    // The last form submit: k its data, n its request number, t its time (for the dedup).
    let lastSubmit = {};

    // A control's value as trimmed text; a fieldset's (it has none) is empty.
    const text = (value) => (value || "").trim();

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

    // Sends a lead with the visit's session id, new leads and queued ones alike: a retry may find
    // the session its first attempt missed. Calltouch's script may still be loading: it is asked
    // every 99 ms for up to 1.5 s, or until the page is left (pagehide calls the attempt at once,
    // while keepalive still can send), then its cookie is tried; an id that is not the digits
    // Calltouch uses is dropped rather than sent.
    // The lead is queued first and stays queued until the gateway answers for good (2xx, or a 4xx
    // other than 429); a 429, a 5xx or a network error leave it for a retry, silently: the answer
    // is {status: "deferred"}, never a rejection.
    const send = (lead) =>
      new Promise((resolve) => {
        const started = now();
        const attempt = (pagehide) => {
          try {
            let session = lead.sessionId;
            // A missing ct() throws here, and so may a broken one: either way it is not waited for.
            try {
              session ||= modId && window.ct("calltracking_params", modId)?.sessionId;
              if (!session && modId && !pagehide && now() - started < 1500) return setTimeout(attempt, 99);
            } catch {}
            window.removeEventListener("pagehide", attempt);
            // Calltouch's cookie, the fallback; no cookie, or a sandboxed frame's refusal, throws.
            try {
              session ||= document.cookie.match(/(^|; )_ct_session_id=(\d+)/)[2];
            } catch {}
            lead.sessionId = /^\d{1,20}$/.exec(session)?.[0];
            const same = (row) => row.l.requestNumber == lead.requestNumber;
            // keepalive: the request outlives the page, which a form's navigation is about to
            // leave. A browser (or an extension) that refuses keepalive gets the same request
            // without it: the lead of a form that stays on the page still gets out.
            const post = (options) => fetch(endpoint, { method: "POST", body: JSON.stringify(lead), ...options });
            queue((rows) => (rows.some(same) ? rows : rows.concat({ t: now(), l: lead })));
            resolve(
              post({ keepalive: true })
                .catch(() => post())
                .then((response) =>
                  response.status > 499 || response.status == 429
                    ? { status: "deferred" }
                    : (queue((rows) => rows.filter((row) => !same(row))), response.json()),
                )
                .catch(() => ({ status: "deferred" })),
            );
          } catch {
            resolve({});
          }
        };
        window.addEventListener("pagehide", attempt);
        attempt();
      });

    // What every lead carries, whichever way it came, and then sends it: the page, a subject
    // (a form's own first: its data-ct-subject, then the script's, then its name or id; the
    // page's title last), a request number.
    const stamp = (lead, form) => {
      lead.requestUrl = location.href.slice(0, 2048);
      lead.subject = String(
        lead.subject ||
          form?.dataset.ctSubject ||
          scriptSubject ||
          // getAttribute: form.name and form.id would be a control called "name" or "id".
          form?.getAttribute("name") ||
          form?.getAttribute("id") ||
          document.title,
      )
        .trim()
        .slice(0, 256);
      lead.requestNumber ||= newRequestNumber();
      return send(lead);
    };

    // What a field without data-ct-field holds, guessed from its type, name, id, autocomplete,
    // placeholder and the text of its (first) <label>, in English and Russian: Bitrix names its
    // fields form_text_1, form_text_2, and only the labels say which is the phone. Choices and
    // lists are never contact fields. (A chain of ifs: a table of the same patterns gzips larger.)
    const guessKind = (field, type) => {
      // labels is null for a hidden input.
      const hints = [type, field.name, field.id, field.autocomplete, field.placeholder, field.labels?.[0]?.textContent]
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
    // custom field instead, so the rest of the lead still goes (a Russian phone: 10 digits, or
    // 11 with the leading 7 or 8, among spaces, brackets, "+", "-" and "." only, as the gateway
    // takes it).
    const plausible = (kind, value) =>
      kind == "email"
        ? /^[^@\s]+@[^@\s]+\.[^@\s.]{2,}$/.test(value)
        : kind != "phoneNumber" || /^[ ()+.-]*[78]?([ ()+.-]*\d){10}[ ()+.-]*$/.test(value);

    // Fields that never leave the page, judged by name (or by the NAME of custom:NAME), camelCase
    // split into words first (smsCode is "sms Code"). Anywhere in the name: passwords, card
    // numbers, anti-forgery tokens, captchas, secrets, passports ("pass" has passport; pasport,
    // паспорт) and SNILS, the pension number. Only as a word of their own: PINs, one-time codes
    // and INNs (the tax number): inside other words these letters are harmless (shipping,
    // dinner, postcode).
    const SECRET =
      /pas[sp]|парол|card|cv[vc]|[cx]srf|token|nonce|captcha|secret|snils|снилс|паспорт|(?<!\p{L})(pin|otp|code|inn|пин|код|инн)(?!\p{L})/iu;

    // Adds a value to a field, after the one already there (a name split over first and last,
    // checkboxes of one name), within the field's limit.
    const append = (object, key, value, separator, max) =>
      (object[key] = ((object[key] ? object[key] + separator : "") + value).slice(0, max));

    // A form's lead, or nothing when it has no contact (a search form, a login form).
    const readForm = (form) => {
      const lead = {};
      const customFields = {};
      // form.elements, not a query: it also holds controls tied to the form by form="id".
      for (const field of form.elements) {
        const { type, dataset } = field;
        const declared = dataset.ctField || "";
        const customName = /^custom:(.*)/.exec(declared)?.[1];
        let name = customName ?? (field.name || field.id);
        // The honeypot is always sent, empty or not: the gateway scores it.
        if ("ctHoneypot" in dataset) {
          lead._honeypot = text(field.value);
          continue;
        }
        // Buttons, files, disabled and skipped fields and secrets are never read; hidden fields
        // only when marked, since most carry the site's state rather than the visitor's words.
        if (
          !type ||
          field.disabled ||
          "ctSkip" in dataset ||
          /^(password|file|submit|button|reset|image)$/.test(type) ||
          (type == "hidden" && !declared) ||
          SECRET.test(name.replace(/(?<=\p{Ll})(?=\p{Lu})/gu, " ")) ||
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
        const kind = customName == null && (declared || guessKind(field, type));
        // The first plausible value of each kind is the lead's, but a name split over several
        // fields (first, last) becomes one fio; the rest become custom fields.
        if (
          /^(fio|phoneNumber|email|subject|comment|tags)$/.test(kind) &&
          (kind == "fio" || !lead[kind]) &&
          plausible(kind, value)
        ) {
          append(lead, kind, value, " ", kind == "comment" ? 4096 : 256);
          continue;
        }
        // Brackets (services[]) are PHP's array syntax, not part of the name; at most 20 custom
        // fields, and a repeated name (checkboxes) joins its values.
        name = name.replace(/[[\]]/g, "").slice(0, 64);
        if (name && (customFields[name] || Object.keys(customFields).length < 20)) {
          append(customFields, name, value, ", ", 1024);
        }
      }
      if (lead.fio || lead.phoneNumber || lead.email) {
        lead.customFields = customFields;
        return lead;
      }
    };

    // The names of the form's controls the visitor can see.
    const visibleNames = (form) =>
      [...form.elements].filter((field) => field.checkVisibility()).map((field) => field.name);

    // A submit, heard in the capture phase before the site's handlers can stop it; the snippet
    // only reads, so those handlers run unchanged.
    const onSubmit = (event) => {
      try {
        const form = event.target;
        // A form the browser would refuse to submit is not a lead yet (a script can submit
        // around the browser's validation). Novalidate forms validate themselves, and so do
        // the submits of formnovalidate buttons ("just call me" beside "send").
        // ctgw marks the event as taken: where two snippets hear one submit (a framed page with
        // its own snippet, which listens first; a snippet installed twice), only one sends it.
        const lead =
          !event.ctgw &&
          // localName, not instanceof HTMLFormElement: a framed form is another window's.
          form.localName == "form" &&
          !("ctIgnore" in form.dataset) &&
          (!formSelector || form.matches(formSelector)) &&
          (form.noValidate || event.submitter?.formNoValidate || form.checkValidity()) &&
          readForm(form);
        if (lead) {
          event.ctgw = 1;
          // Read now, judged once the site's own handlers have run: a step of a multi-step form
          // submits too, and its handler cancels the submit and shows the next step. Fields
          // that were hidden and now show mean a step: the final submit sends the whole form.
          const shown = visibleNames(form);
          setTimeout(() => {
            try {
              if (visibleNames(form).some((name) => name && !shown.includes(name))) return;
              // A double submit of the same data within 10 s keeps its number: the gateway
              // dedups it.
              const data = JSON.stringify(lead);
              lead.requestNumber =
                lastSubmit.k == data && now() - lastSubmit.t < 1e4 ? lastSubmit.n : newRequestNumber();
              lastSubmit = { k: data, n: lead.requestNumber, t: now() };
              // ms since page load, for the gateway's bot score; retries keep the first value.
              lead._elapsed = Math.round(performance.now());
              stamp(lead, form);
            } catch {}
          });
        }
      } catch {}
    };

    // Where submits are heard: this document, whose capture phase sees every form, those added
    // later too; and, since submit does not cross a shadow root's boundary nor a frame's, every
    // open shadow root the visitor focuses a field in (found on the path of focusin, which
    // crosses them) and every same-origin frame's document (found by its load event, or
    // already loaded when this script runs; a cross-origin frame's is null). A listener added
    // twice to one target is added once, so a root found again costs nothing.
    const listen = (root) => {
      root?.addEventListener("submit", onSubmit, true);
      root?.addEventListener("focusin", discover, true);
      root?.addEventListener("load", discover, true);
    };
    const discover = (event) =>
      event.composedPath().forEach((node) => listen(node.nodeType == 11 ? node : node.contentDocument));
    listen(document);
    // Only a frame that has finished loading: one still loading may load its own snippet,
    // which must listen first; its load event comes after that.
    for (const frame of document.querySelectorAll("iframe")) {
      if (frame.contentDocument?.readyState == "complete") listen(frame.contentDocument);
    }

    // Leads a failed attempt left behind: sent again when the browser is back online, and those
    // of earlier pages a second after this one loads (so that the page's own first requests go
    // first), read now: this page's own leads are queued while in flight, and must not be sent
    // twice.
    const retry = (rows) => rows.forEach((row) => send(row.l));
    window.addEventListener("online", () => retry(queue()));
    setTimeout(retry, 999, queue());

    // The manual API, on a copy so that the caller's object is left as it was; it replaces the
    // stub and replays the calls the stub queued before this script ran.
    const stub = window.ctLeads;
    const api = (window.ctLeads = { send: (data) => stamp({ ...data }) });
    // then(undefined), for a call queued without a resolver, changes nothing.
    stub?.q?.forEach(([data, resolve]) => api.send(data).then(resolve));
  } catch {}
})(window, document);
